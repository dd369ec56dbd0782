defmodule HostApp do
  @moduledoc """
  A real host application of BeamLens, inside its repository: an Ecto repo
  on PostgreSQL, Tower, ecto_psql_extras and the real `:telemetry`, set up
  exactly as BeamLens's README tells users to. Its tests check BeamLens
  against the real libraries; `bin/demo` runs it.
  """
end
