import Config

# bin/pg start prints the URL of a throwaway PostgreSQL; `mix test` runs it
# itself (see mix.exs) when BEAMLENS_PG_URL is not set.
if url = System.get_env("BEAMLENS_PG_URL") do
  config :host_app, HostApp.Repo, url: url
end
