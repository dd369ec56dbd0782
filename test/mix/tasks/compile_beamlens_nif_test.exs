defmodule Mix.Tasks.Compile.BeamlensNifTest do
  # Changes the working directory and environment variables of the VM.
  use ExUnit.Case, async: false

  alias Mix.Task.Compiler.Diagnostic
  alias Mix.Tasks.Compile.BeamlensNif

  @moduletag :tmp_dir

  setup %{tmp_dir: dir} do
    previous_shell = Mix.shell()
    Mix.shell(Mix.Shell.Process)
    cwd = File.cwd!()
    profile = System.get_env("BEAMLENS_NIF_PROFILE")
    System.put_env("BEAMLENS_NIF_PROFILE", "debug")

    on_exit(fn ->
      Mix.shell(previous_shell)
      File.cd!(cwd)

      if profile,
        do: System.put_env("BEAMLENS_NIF_PROFILE", profile),
        else: System.delete_env("BEAMLENS_NIF_PROFILE")
    end)

    # The layout of the real tree: a workspace in native/ with the NIF crate
    # as a member.
    workspace = Path.join(dir, "native")
    crate = Path.join(workspace, "beamlens_nif")
    File.mkdir_p!(Path.join(crate, "src"))

    File.write!(Path.join(workspace, "Cargo.toml"), """
    [workspace]
    members = ["beamlens_nif"]
    resolver = "2"
    """)

    File.write!(Path.join(crate, "Cargo.toml"), """
    [package]
    name = "beamlens_nif"
    version = "0.0.0"
    edition = "2021"

    [lib]
    crate-type = ["cdylib"]

    [features]
    test-nifs = []
    """)

    File.write!(Path.join(crate, "src/lib.rs"), "pub fn answer() -> u32 { 42 }\n")
    File.cd!(dir)

    %{
      workspace: workspace,
      crate: crate,
      so: Path.join([dir, "priv", "native", "libbeamlens_nif.so"])
    }
  end

  test "builds, installs the library and then does nothing until a source changes", ctx do
    assert {:ok, []} = BeamlensNif.run([])
    assert File.exists?(ctx.so)

    assert File.ls!(Path.dirname(ctx.so)) |> Enum.sort() ==
             ~w(beamlens_nif.fingerprint libbeamlens_nif.so)

    assert_received {:mix_shell, :info, ["Compiling NIF beamlens_nif (debug) with cargo"]}

    assert BeamlensNif.run([]) == {:noop, []}

    File.write!(Path.join(ctx.crate, "src/lib.rs"), "pub fn answer() -> u32 { 43 }\n")
    assert {:ok, []} = BeamlensNif.run([])
    assert BeamlensNif.run([]) == {:noop, []}
  end

  test "the library is built in the workspace's target directory", ctx do
    assert {:ok, []} = BeamlensNif.run([])
    assert File.exists?(Path.join([ctx.workspace, "target", "debug", "libbeamlens_nif.so"]))
    assert File.exists?(Path.join(ctx.workspace, "Cargo.lock"))
    refute File.exists?(Path.join(ctx.crate, "target"))
  end

  test "a change in another workspace member is noticed", ctx do
    other = Path.join(ctx.workspace, "other")
    File.mkdir_p!(Path.join(other, "src"))

    File.write!(Path.join(other, "Cargo.toml"), """
    [package]
    name = "other"
    version = "0.0.0"
    edition = "2021"
    """)

    File.write!(Path.join(other, "src/lib.rs"), "pub fn x() -> u32 { 1 }\n")

    File.write!(Path.join(ctx.workspace, "Cargo.toml"), """
    [workspace]
    members = ["beamlens_nif", "other"]
    resolver = "2"
    """)

    assert {:ok, []} = BeamlensNif.run([])
    assert BeamlensNif.run([]) == {:noop, []}
    File.write!(Path.join(other, "src/lib.rs"), "pub fn x() -> u32 { 2 }\n")
    assert {:ok, []} = BeamlensNif.run([])
  end

  test "a profile switch is noticed", ctx do
    assert {:ok, []} = BeamlensNif.run([])
    assert File.read!(Path.join(Path.dirname(ctx.so), "beamlens_nif.fingerprint")) =~ "debug "

    System.put_env("BEAMLENS_NIF_PROFILE", "release")
    assert {:ok, []} = BeamlensNif.run([])
    assert File.read!(Path.join(Path.dirname(ctx.so), "beamlens_nif.fingerprint")) =~ "release "
  end

  test "cargo errors become diagnostics with file and line", ctx do
    File.write!(Path.join(ctx.crate, "src/lib.rs"), """
    pub fn answer() -> u32 {
        undefined_thing
    }
    """)

    assert {:error, [%Diagnostic{} = diagnostic]} = BeamlensNif.run([])
    assert diagnostic.severity == :error
    assert diagnostic.compiler_name == "cargo"
    assert diagnostic.message =~ "cannot find value `undefined_thing`"
    assert diagnostic.file == Path.join(ctx.crate, "src/lib.rs")
    assert diagnostic.position == 2
    refute File.exists?(ctx.so)
  end

  test "cargo warnings are reported without failing the build", ctx do
    File.write!(
      Path.join(ctx.crate, "src/lib.rs"),
      "pub fn answer() -> u32 { let unused = 1; 42 }\n"
    )

    assert {:ok, [%Diagnostic{severity: :warning, message: message}]} = BeamlensNif.run([])
    assert message =~ "unused variable"
    assert File.exists?(ctx.so)
  end

  test "an unknown profile is an error that names the variable" do
    System.put_env("BEAMLENS_NIF_PROFILE", "fast")
    assert {:error, [%Diagnostic{message: message}]} = BeamlensNif.run([])
    assert message == ~s(BEAMLENS_NIF_PROFILE must be one of release, debug, got: "fast")
  end

  test "clean/0 removes the installed library", ctx do
    assert {:ok, []} = BeamlensNif.run([])
    assert :ok = BeamlensNif.clean()
    refute File.exists?(ctx.so)
  end

  test "test-only NIFs are built in the test environment only" do
    for profile <- ["debug", "release"], env <- [:dev, :prod] do
      refute "test-nifs" in BeamlensNif.cargo_args(profile, env)
    end

    assert ["--features", "test-nifs"] -- BeamlensNif.cargo_args("debug", :test) == []
    # This suite runs in the test build, which has them.
    assert function_exported?(Beamlens.Native, :async_panic, 1)
  end
end
