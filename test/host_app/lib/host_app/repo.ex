defmodule HostApp.Repo do
  @moduledoc "The application's Ecto repo, on PostgreSQL."
  use Ecto.Repo, otp_app: :host_app, adapter: Ecto.Adapters.Postgres
end
