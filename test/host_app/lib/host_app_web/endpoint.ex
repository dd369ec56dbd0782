defmodule HostAppWeb.Endpoint do
  @moduledoc """
  The host app's web endpoint, as `mix phx.new` makes one: a cookie
  session, the LiveView socket (origin checked against the configured
  host) and the router that mounts LiveDashboard with BeamLens's page.
  It listens on 127.0.0.1 only (config/config.exs).
  """
  use Phoenix.Endpoint, otp_app: :host_app

  @session_options [
    store: :cookie,
    key: "_host_app_key",
    signing_salt: "b3aml3ns",
    same_site: "Lax"
  ]

  socket "/live", Phoenix.LiveView.Socket,
    websocket: [connect_info: [session: @session_options]],
    longpoll: false

  plug Plug.RequestId

  plug Plug.Parsers,
    parsers: [:urlencoded, :multipart, :json],
    pass: ["*/*"],
    json_decoder: Phoenix.json_library()

  plug Plug.MethodOverride
  plug Plug.Head
  plug Plug.Session, @session_options
  plug HostAppWeb.Router
end
