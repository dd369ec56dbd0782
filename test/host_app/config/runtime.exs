import Config

# bin/pg start prints the URL of a throwaway PostgreSQL; `mix test` runs it
# itself (see mix.exs) when BEAMLENS_PG_URL is not set.
if url = System.get_env("BEAMLENS_PG_URL") do
  config :host_app, HostApp.Repo, url: url
end

# The web endpoint's port (default 4000; the tests take any free one).
if (port = System.get_env("PORT")) && config_env() != :test do
  config :host_app, HostAppWeb.Endpoint, http: [ip: {127, 0, 0, 1}, port: String.to_integer(port)]
end
