defmodule HostApp.MixProject do
  @moduledoc false
  # A real application that uses BeamLens the way a user does (see the
  # README's "The host app"): an Ecto repo on PostgreSQL, Tower, and
  # ecto_psql_extras. It is its own Mix project, not part of the library's
  # compile; bin/test runs its tests on Elixir 1.16+ (Tower needs it).
  use Mix.Project

  def project do
    [
      app: :host_app,
      version: "0.1.0",
      elixir: "~> 1.16",
      start_permanent: Mix.env() == :prod,
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: deps(),
      aliases: aliases(),
      # Not *_test.exs: the library's own `mix test` looks for those in all
      # of test/, this directory included.
      test_pattern: "*_hosttest.exs",
      test_load_filters: [&String.ends_with?(&1, "_hosttest.exs")]
    ]
  end

  def application do
    # :os_mon for the :system watcher (Mix prunes the code path to declared
    # applications since Elixir 1.15).
    [mod: {HostApp.Application, []}, extra_applications: [:logger, :os_mon]]
  end

  # The library's scripted provider and its fixtures, shared rather than
  # copied (not its telemetry stand-in: this app has the real library).
  @library_support ~w(loopback_server.ex llm_fixtures.ex eventually.ex watcher_case.ex)
  defp elixirc_paths(:test),
    do: [
      "lib",
      "test/support" | Enum.map(@library_support, &Path.expand("../support/#{&1}", __DIR__))
    ]

  defp elixirc_paths(_), do: ["lib"]

  defp deps do
    [{:beamlens, path: "../.."} | hex_or_path_deps()]
  end

  # The web part (the endpoint that mounts LiveDashboard with BeamLens's page).
  @web_deps ~w(phoenix_live_dashboard phoenix_live_view phoenix phoenix_pubsub phoenix_template
               phoenix_html plug plug_crypto mime websock websock_adapter bandit thousand_island
               hpax telemetry_metrics)a

  # From Hex when it is installed (the requirements a user writes);
  # otherwise the released sources in ../shared/deps, next to the
  # repository (BEAMLENS_DEPS_DIR overrides).
  defp hex_or_path_deps do
    if Code.ensure_loaded?(Hex) do
      [
        {:ecto_sql, "~> 3.13"},
        {:postgrex, "~> 0.21"},
        {:tower, "~> 0.8.6"},
        {:ecto_psql_extras, "~> 0.8"},
        {:telemetry, "~> 1.0"},
        {:jason, "~> 1.4"},
        {:phoenix, "~> 1.8"},
        {:phoenix_live_view, "~> 1.1"},
        {:phoenix_live_dashboard, "~> 0.8.7"},
        {:bandit, "~> 1.5"}
      ]
    else
      dir = System.get_env("BEAMLENS_DEPS_DIR") || Path.expand("../../../shared/deps", __DIR__)
      # BeamLens's mix.exs then declares its optional LiveDashboard too.
      System.put_env("BEAMLENS_DEPS_DIR", dir)

      for name <- ~w(telemetry decimal jason db_connection postgrex ecto ecto_sql
                     tower uuid_v7 table_rex ecto_psql_extras)a ++ @web_deps do
        {name, path: Path.join(dir, Atom.to_string(name)), override: true}
      end
    end
  end

  # `mix test` starts the throwaway PostgreSQL of bin/pg (or finds it
  # running) unless BEAMLENS_PG_URL names a database.
  defp aliases, do: [test: [&database/1, "test"]]

  defp database(_args) do
    if System.get_env("BEAMLENS_PG_URL") in [nil, ""] do
      case System.cmd(Path.expand("../../bin/pg", __DIR__), ["start"], stderr_to_stdout: false) do
        {url, 0} ->
          System.put_env("BEAMLENS_PG_URL", url |> String.split("\n", trim: true) |> List.last())

        {_, status} ->
          Mix.raise(
            "the host app's tests need PostgreSQL: bin/pg start failed (exit #{status}, reason above)"
          )
      end
    end
  end
end
