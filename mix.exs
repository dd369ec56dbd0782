# The native compiler must exist before Mix looks it up in `compilers`, both
# here and when BeamLens is compiled as a dependency of a host app, so it is
# loaded from source here and left out of `elixirc_paths` below.
unless Code.ensure_loaded?(Mix.Tasks.Compile.BeamlensNif) do
  Code.require_file("lib/mix/tasks/compile.beamlens_nif.ex", __DIR__)
end

defmodule Beamlens.MixProject do
  use Mix.Project

  @version "0.1.0"
  @source_url "https://github.com/beamlens/beamlens"

  def project do
    [
      app: :beamlens,
      version: @version,
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      compilers: [:beamlens_nif | Mix.compilers()],
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: deps(),
      xref: [exclude: [:cpu_sup, :memsup, :disksup]],
      description:
        "An AI agent inside your Elixir app that watches the BEAM and explains anomalies",
      package: package(),
      source_url: @source_url,
      docs: [main: "readme", extras: ["README.md"]]
    ]
  end

  # :os_mon is started on demand by the :system watcher only: starting it
  # changes the host (alarm handler, memsup/cpu_sup port programs, disk
  # alarms in the log), so a host that does not use that watcher must not
  # get it. Declaring it here is no way out: in `applications` Mix and
  # releases start it at boot in every host; in `included_applications` a
  # release only loads it, even when the host itself lists it to be started
  # (measured on Elixir 1.18: the host's os_mon was then never started). So
  # the host declares it (the watcher's error says how), and only this
  # project's own tests include it, since Mix 1.15+ puts on the code path
  # only the applications a project declares.
  def application do
    [extra_applications: [:logger, :runtime_tools]] ++ test_applications(Mix.env())
  end

  defp test_applications(:test), do: [included_applications: [:os_mon]]
  defp test_applications(_), do: []

  # lib/mix/tasks/compile.beamlens_nif.ex is loaded by this file (see top).
  defp elixirc_paths(:test), do: ["lib/beamlens.ex", "lib/beamlens", "test/support"]
  defp elixirc_paths(_), do: ["lib/beamlens.ex", "lib/beamlens"]

  # BeamLens has no Hex dependencies of its own. `:telemetry` is in practically
  # every Elixir app (Phoenix, Ecto and Plug bring it); it is declared when Hex
  # is available so users get the real library. Offline, the test suite
  # provides a compatible module (see test/support/telemetry.ex).
  #
  # Phoenix LiveDashboard is optional: with it, Beamlens.Dashboard is
  # compiled (the dependency makes Mix compile it first). Offline, a host
  # app that uses the sources of BEAMLENS_DEPS_DIR (test/host_app) sets
  # that variable; BeamLens's own build never takes LiveDashboard from it.
  defp deps do
    dir = System.get_env("BEAMLENS_DEPS_DIR")

    cond do
      Code.ensure_loaded?(Hex) ->
        [{:telemetry, "~> 1.0"}, {:phoenix_live_dashboard, "~> 0.8", optional: true}]

      dir && dependency?() ->
        [
          {:phoenix_live_dashboard,
           path: Path.join(dir, "phoenix_live_dashboard"), optional: true}
        ]

      true ->
        []
    end
  end

  # Whether BeamLens is being loaded as a dependency of another project
  # (Mix evaluates this file with the parent project on its stack).
  defp dependency?, do: Mix.Project.get() not in [nil, __MODULE__]

  defp package do
    [
      licenses: ["Apache-2.0"],
      links: %{"GitHub" => @source_url},
      # The Cargo workspace (native/Cargo.toml, one Cargo.lock) and both of
      # its crates; not native/target.
      files: ~w(lib native/Cargo.toml native/Cargo.lock
                native/beamlens_core/Cargo.toml native/beamlens_core/src
                native/beamlens_nif/Cargo.toml native/beamlens_nif/src
                mix.exs README.md LICENSE docs)
    ]
  end
end
