defmodule Mix.Tasks.Compile.BeamlensNif do
  @moduledoc """
  Builds the Rust crate `beamlens_nif` of the Cargo workspace `native/`
  with cargo and installs the shared library as
  `priv/native/libbeamlens_nif.so`.

  The workspace has two crates: `native/beamlens_core` (plain Rust, no VM
  needed) and `native/beamlens_nif` (the rustler glue the VM loads). They
  share one `native/Cargo.lock` and one target directory, `native/target`,
  where the library lands as `native/target/<profile>/libbeamlens_nif.so`.

  BeamLens does not depend on the `rustler` Mix package; this compiler is all
  it needs. It runs before the Elixir compiler (the NIF is loaded by
  `@on_load`, also at compile time) and:

    * skips cargo entirely when neither the Rust sources (`native/Cargo.toml`,
      `native/Cargo.lock`, each crate's `Cargo.toml` and `src/**/*.rs`) nor
      the profile changed since the last install: their contents are hashed,
      so a `git checkout` or a profile switch is always noticed;
    * installs the library atomically (temporary file, then rename), so a
      running VM or a failed build never sees half a file;
    * turns cargo errors and warnings into compiler diagnostics with file and
      line.

  ## Environment

    * `BEAMLENS_NIF_PROFILE` - `release` (default) or `debug`. Tests may use
      `debug` (about half the cold build time); benchmarks and production use
      `release`.
    * `CARGO_TARGET_DIR` - honoured like cargo does.
    * `CARGO` - the cargo executable (default: `cargo` on the `PATH`).
  """

  use Mix.Task.Compiler

  @recursive true
  @crate "beamlens_nif"
  @profiles ~w(release debug)

  @impl Mix.Task.Compiler
  def run(_args) do
    root = File.cwd!()
    workspace = Path.join(root, "native")

    with {:ok, profile} <- profile(),
         {:ok, cargo} <- cargo() do
      build(root, workspace, profile, cargo)
    end
  end

  @impl Mix.Task.Compiler
  def manifests, do: [fingerprint_path(File.cwd!())]

  @impl Mix.Task.Compiler
  def clean do
    root = File.cwd!()
    File.rm(library_path(root))
    File.rm(fingerprint_path(root))
    :ok
  end

  defp build(root, workspace, profile, cargo) do
    fingerprint = fingerprint(workspace, profile)
    installed = library_path(root)

    if File.exists?(installed) and File.read(fingerprint_path(root)) == {:ok, fingerprint} do
      {:noop, []}
    else
      Mix.shell().info("Compiling NIF #{@crate} (#{profile}) with cargo")

      case run_cargo(cargo, workspace, profile) do
        {0, diagnostics} ->
          install(root, workspace, profile, diagnostics)

        {status, diagnostics} ->
          errors = Enum.filter(diagnostics, &(&1.severity == :error))

          errors =
            if errors == [] do
              [diagnostic(:error, "cargo build failed with exit status #{status}", workspace, 0)]
            else
              errors
            end

          Enum.each(errors, &Mix.shell().error(&1.message))
          {:error, errors}
      end
    end
  end

  defp install(root, workspace, profile, diagnostics) do
    built = Path.join([target_dir(workspace), profile, built_name()])

    if File.exists?(built) do
      dest = library_path(root)
      File.mkdir_p!(Path.dirname(dest))
      tmp = dest <> ".tmp-#{System.unique_integer([:positive])}"
      File.cp!(built, tmp)
      File.rename!(tmp, dest)
      # The build may have created Cargo.lock; record the state it built.
      File.write!(fingerprint_path(root), fingerprint(workspace, profile))
      # Mix only links _build/<env>/lib/beamlens/priv when priv/ existed when
      # the build structure was made; it may have been created just now. The
      # link points at the current directory's priv/, so only do this from
      # the project's own root.
      if Mix.Project.project_file() && Path.dirname(Mix.Project.project_file()) == root do
        Mix.Project.build_structure()
      end

      {:ok, diagnostics}
    else
      message = "cargo succeeded but #{built} is missing"
      {:error, [diagnostic(:error, message, workspace, 0)]}
    end
  end

  defp run_cargo(cargo, workspace, profile) do
    args = cargo_args(profile, Mix.env())

    port =
      Port.open({:spawn_executable, cargo}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 16_384},
        args: args,
        cd: workspace
      ])

    collect(port, workspace, [], nil, "")
  end

  @doc false
  # The cargo arguments for a profile and Mix environment, run in the
  # workspace directory. The NIFs that only tests need (`async_echo`,
  # `async_panic`, `sync_panic`, `dirty_checksum`) are behind the NIF crate's
  # `test-nifs` feature, enabled in the :test environment only.
  @spec cargo_args(String.t(), atom()) :: [String.t()]
  def cargo_args(profile, env) do
    ["build", "--package", @crate, "--lib"] ++
      if(profile == "release", do: ["--release"], else: []) ++
      if(env == :test, do: ["--features", "test-nifs"], else: [])
  end

  # Streams cargo's output to the shell and collects `error:`/`warning:`
  # headlines together with the `--> file:line:col` location that follows.
  defp collect(port, workspace, acc, pending, partial) do
    receive do
      {^port, {:data, {:noeol, chunk}}} ->
        collect(port, workspace, acc, pending, partial <> chunk)

      {^port, {:data, {:eol, chunk}}} ->
        line = partial <> chunk
        Mix.shell().info(line)
        {acc, pending} = parse_line(line, workspace, acc, pending)
        collect(port, workspace, acc, pending, "")

      {^port, {:exit_status, status}} ->
        acc = if pending, do: [pending | acc], else: acc
        {status, Enum.reverse(acc)}
    end
  end

  defp parse_line(line, workspace, acc, pending) do
    headline = Regex.run(~r/^(error|warning)(?:\[\w+\])?: (.+)$/, line)
    location = pending && Regex.run(~r/^\s*--> (.+):(\d+):(\d+)$/, line)

    cond do
      headline ->
        [_, severity, message] = headline
        acc = if pending, do: [pending | acc], else: acc

        if summary_line?(message) do
          {acc, nil}
        else
          severity = if severity == "error", do: :error, else: :warning
          {acc, diagnostic(severity, message, workspace, 0)}
        end

      location ->
        [_, file, line_no, _col] = location

        located = %{
          pending
          | file: Path.expand(file, workspace),
            position: String.to_integer(line_no)
        }

        {[located | acc], nil}

      true ->
        {acc, pending}
    end
  end

  # "could not compile `x` (lib) due to 2 previous errors" and
  # "`x` (lib) generated 1 warning" repeat what was already reported.
  defp summary_line?(message) do
    String.starts_with?(message, "could not compile") or
      message =~ ~r/generated \d+ warnings?/
  end

  defp diagnostic(severity, message, workspace, position) do
    %Mix.Task.Compiler.Diagnostic{
      compiler_name: "cargo",
      file: Path.join(workspace, "Cargo.toml"),
      message: message,
      position: position,
      severity: severity
    }
  end

  defp profile do
    case System.get_env("BEAMLENS_NIF_PROFILE", "release") do
      profile when profile in @profiles ->
        {:ok, profile}

      other ->
        message =
          "BEAMLENS_NIF_PROFILE must be one of #{Enum.join(@profiles, ", ")}, got: #{inspect(other)}"

        Mix.shell().error(message)
        {:error, [diagnostic(:error, message, File.cwd!(), 0)]}
    end
  end

  defp cargo do
    name = System.get_env("CARGO", "cargo")

    case System.find_executable(name) do
      nil ->
        message =
          "cannot build the BeamLens NIF: #{inspect(name)} was not found on the PATH. " <>
            "Install Rust from https://rustup.rs (or your OS packages) and try again."

        Mix.shell().error(message)
        {:error, [diagnostic(:error, message, File.cwd!(), 0)]}

      path ->
        {:ok, path}
    end
  end

  # Every input of the build: the workspace manifest and lock file, and each
  # member crate's manifest and sources.
  defp fingerprint(workspace, profile) do
    files =
      ["Cargo.toml", "Cargo.lock"]
      |> Enum.map(&Path.join(workspace, &1))
      |> Enum.concat(Path.wildcard(Path.join(workspace, "*/Cargo.toml")))
      |> Enum.concat(Path.wildcard(Path.join(workspace, "*/src/**/*.rs")))
      |> Enum.sort()

    state =
      Enum.reduce(files, :erlang.md5_init(), fn file, state ->
        content =
          case File.read(file) do
            {:ok, content} -> content
            {:error, _} -> ""
          end

        state
        |> :erlang.md5_update(Path.relative_to(file, workspace))
        |> :erlang.md5_update(<<byte_size(content)::64>>)
        |> :erlang.md5_update(content)
      end)

    digest =
      state
      |> :erlang.md5_update(profile)
      |> :erlang.md5_update(Enum.join(cargo_args(profile, Mix.env()), " "))
      |> :erlang.md5_final()

    "#{profile} " <> Base.encode16(digest, case: :lower)
  end

  defp target_dir(workspace) do
    case System.get_env("CARGO_TARGET_DIR") do
      dir when dir in [nil, ""] -> Path.join(workspace, "target")
      dir -> Path.expand(dir)
    end
  end

  defp built_name do
    case :os.type() do
      {:unix, :darwin} -> "lib#{@crate}.dylib"
      {:win32, _} -> "#{@crate}.dll"
      _ -> "lib#{@crate}.so"
    end
  end

  defp library_path(root) do
    ext = if match?({:win32, _}, :os.type()), do: ".dll", else: ".so"
    Path.join([root, "priv", "native", "lib#{@crate}" <> ext])
  end

  defp fingerprint_path(root), do: Path.join([root, "priv", "native", "#{@crate}.fingerprint"])
end
