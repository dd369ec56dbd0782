import Config

config :host_app, ecto_repos: [HostApp.Repo]

# The database URL comes from config/runtime.exs (bin/pg prints one).
config :host_app, HostApp.Repo, pool_size: 5

# Tower reports every crash it captures to BeamLens's exception store.
config :tower, reporters: [Beamlens.Domain.Exception.ExceptionStore]

# What HostApp.Application starts: the telemetry store's options, and
# BeamLens's (false: not started by the application). BeamLens's watchers
# default to the app's one list, HostApp.Application.watchers/0.
config :host_app, :telemetry_store, []

config :host_app, :beamlens, []

# The web endpoint: LiveDashboard with BeamLens's page at /dashboard/beamlens,
# on 127.0.0.1 only. The origin of LiveView's websocket is checked against
# the url's host, and forms carry a CSRF token (the router's pipeline).
# Bandit's defaults (100 acceptors, each with a supervisor of its own), as
# most apps run it: the :sup watcher must still reach the app's own tree.
config :host_app, HostAppWeb.Endpoint,
  adapter: Bandit.PhoenixAdapter,
  url: [host: "127.0.0.1"],
  http: [ip: {127, 0, 0, 1}, port: 4000],
  server: true,
  check_origin: true,
  render_errors: [formats: [html: HostAppWeb.ErrorHTML], layout: false],
  pubsub_server: HostApp.PubSub,
  live_view: [signing_salt: "b3aml3ns-lv"],
  # A throwaway app's key (a real app reads it from the environment).
  secret_key_base: "host-app-secret-key-base-only-for-this-test-app-" <> String.duplicate("0", 32)

config :phoenix, :json_library, Jason

import_config "#{config_env()}.exs"
