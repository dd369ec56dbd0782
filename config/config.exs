import Config

# BeamLens reads its provider settings from `config :beamlens` when they are
# not given in the child spec. Nothing is required here.
if config_env() == :test do
  config :logger, level: :warning
end
