import Config

# A small pool, so that a few concurrent checkouts saturate it, and a long
# queue target, so that DBConnection queues rather than drops them.
config :host_app, HostApp.Repo, pool_size: 4, queue_target: 5_000, queue_interval: 10_000

# Tests start their own BeamLens instances (fast ticks, scripted models).
config :host_app, :beamlens, false

# A short rolling window: a fault shows within a second.
config :host_app, :telemetry_store, window_ms: 1_000, slots: 5

config :logger, level: :warning

# Any free port on 127.0.0.1 (the tests ask the endpoint which).
config :host_app, HostAppWeb.Endpoint, http: [ip: {127, 0, 0, 1}, port: 0]
