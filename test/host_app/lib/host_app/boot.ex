defmodule HostApp.Boot do
  @moduledoc """
  Starts the host app outside `mix test` (the demo, the benchmark): finds
  or starts the throwaway PostgreSQL of `bin/pg`, points the repo at it,
  starts the application and migrates.
  """

  @doc """
  Boots the app with `beamlens` as BeamLens's options (`false`: not
  started; `:watchers` defaults to `HostApp.Application.watchers/0`). Returns the database URL, or `{:error, reason}` when there is
  no PostgreSQL.
  """
  @spec start(keyword() | false, keyword()) :: {:ok, String.t()} | {:error, String.t()}
  def start(beamlens, store_opts \\ []) do
    with {:ok, url} <- database_url() do
      repo = Application.get_env(:host_app, HostApp.Repo, [])
      Application.put_env(:host_app, HostApp.Repo, Keyword.put(repo, :url, url))
      Application.put_env(:host_app, :beamlens, beamlens)
      Application.put_env(:host_app, :telemetry_store, store_opts)
      {:ok, _} = Application.ensure_all_started(:host_app)
      HostApp.Orders.migrate!()
      {:ok, url}
    end
  end

  defp database_url do
    case System.get_env("BEAMLENS_PG_URL") do
      url when url not in [nil, ""] ->
        {:ok, url}

      _ ->
        script = Path.expand("../../../../bin/pg", __DIR__)

        case System.cmd(script, ["start"]) do
          {out, 0} -> {:ok, out |> String.split("\n", trim: true) |> List.last()}
          {_, status} -> {:error, "bin/pg start failed (exit #{status})"}
        end
    end
  end
end
