defmodule HostAppWeb.Router do
  @moduledoc """
  The browser pipeline of a generated Phoenix app (session, CSRF
  protection, secure headers) and LiveDashboard with BeamLens's page, added
  with the one line the README gives.
  """
  use Phoenix.Router, helpers: false

  import Plug.Conn
  import Phoenix.Controller
  import Phoenix.LiveDashboard.Router

  pipeline :browser do
    plug :accepts, ["html"]
    plug :fetch_session
    plug :protect_from_forgery
    plug :put_secure_browser_headers
  end

  scope "/" do
    pipe_through :browser

    live_dashboard "/dashboard",
      ecto_repos: [HostApp.Repo],
      additional_pages: [beamlens: Beamlens.Dashboard]
  end
end
