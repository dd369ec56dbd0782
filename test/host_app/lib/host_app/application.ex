defmodule HostApp.Application do
  @moduledoc """
  The host app's supervision tree, in the order BeamLens's README asks for:
  the repo, the Ecto domain's registry and telemetry store, the app's own
  processes and its web endpoint (LiveDashboard), then BeamLens (when `config :host_app, :beamlens` is a list of
  options; tests start their own instances).
  """
  use Application

  @impl true
  def start(_type, _args) do
    children =
      [
        HostApp.Repo,
        {Registry, keys: :unique, name: Beamlens.Domain.Ecto.Registry},
        {Beamlens.Domain.Ecto.TelemetryStore,
         [repo: HostApp.Repo] ++ Application.get_env(:host_app, :telemetry_store, [])},
        {Task.Supervisor, name: HostApp.Tasks},
        {Phoenix.PubSub, name: HostApp.PubSub},
        HostAppWeb.Endpoint
      ] ++ beamlens()

    Supervisor.start_link(children, strategy: :one_for_one, name: HostApp.Supervisor)
  end

  defp beamlens do
    case Application.get_env(:host_app, :beamlens) do
      opts when is_list(opts) -> [{Beamlens, opts}]
      _ -> []
    end
  end
end
