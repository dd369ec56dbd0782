import Config

config :host_app, ecto_repos: [HostApp.Repo]

# The database URL comes from config/runtime.exs (bin/pg prints one).
config :host_app, HostApp.Repo, pool_size: 5

# Tower reports every crash it captures to BeamLens's exception store.
config :tower, reporters: [Beamlens.Domain.Exception.ExceptionStore]

# What HostApp.Application starts: the telemetry store's options, and
# BeamLens's (false: not started by the application).
config :host_app, :telemetry_store, []

config :host_app, :beamlens,
  watchers: [
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

import_config "#{config_env()}.exs"
