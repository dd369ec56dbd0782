defmodule Beamlens do
  @moduledoc """
  BeamLens watches a running Elixir application from the inside.

  Per domain (VM memory and schedulers, ETS, garbage collection, logs,
  ports, supervisors, the OS) it takes snapshots, notices what is off,
  investigates on the spot with read-only Lua run against the live runtime,
  and reports structured alerts with evidence through `:telemetry`.
  """

  @version Mix.Project.config()[:version]

  @doc """
  The version of BeamLens.

      iex> Beamlens.version() =~ ~r/^\\d+\\.\\d+\\.\\d+/
      true
  """
  @spec version() :: String.t()
  def version, do: @version
end
