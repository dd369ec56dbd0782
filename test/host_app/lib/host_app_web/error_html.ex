defmodule HostAppWeb.ErrorHTML do
  @moduledoc """
  Error pages (the endpoint's `render_errors`): the status text, as a
  generated app renders them when it has no templates.
  """

  @doc "The body of an error page, e.g. \"Not Found\" for 404.html."
  def render(template, _assigns), do: Phoenix.Controller.status_message_from_template(template)
end
