defmodule HostApp.Application do
  @moduledoc """
  The host app's supervision tree, in the order BeamLens's README asks for:
  the repo, the Ecto domain's registry and telemetry store, the app's own
  processes and its web endpoint (LiveDashboard), then BeamLens (when
  `config :host_app, :beamlens` is a list of options, its watchers
  defaulting to `watchers/0`; tests start their own instances).
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

  @doc """
  The watchers BeamLens runs in this app: every built-in domain and the
  app's own Ecto domain. BeamLens's options (`config :host_app, :beamlens`)
  default their `:watchers` to this list; the tests read it too.
  """
  @spec watchers() :: [atom() | keyword()]
  def watchers do
    [
      :beam,
      :ets,
      :gc,
      :logger,
      :ports,
      :sup,
      :system,
      :exception,
      [name: :ecto, domain_module: HostApp.EctoDomain]
    ]
  end

  defp beamlens do
    case Application.get_env(:host_app, :beamlens) do
      opts when is_list(opts) -> [{Beamlens, Keyword.put_new(opts, :watchers, watchers())}]
      _ -> []
    end
  end
end
