defmodule HostApp.Case do
  @moduledoc """
  Helpers for the host app's tests: a fresh telemetry store per test, load
  on the real database, and BeamLens's Lua run the way the model runs it.
  """

  import ExUnit.Assertions

  alias Beamlens.Domain.Ecto.TelemetryStore
  alias HostApp.Repo

  @doc """
  Restarts the application's telemetry store, so a test's window and
  baselines hold only its own queries.
  """
  def fresh_store do
    id = {TelemetryStore, Repo}
    :ok = Supervisor.terminate_child(HostApp.Supervisor, id)
    {:ok, _} = Supervisor.restart_child(HostApp.Supervisor, id)
    {:ok, store} = TelemetryStore.lookup(Repo)
    store
  end

  @doc """
  Starts `n` processes under the test supervisor that each call `fun`
  again and again (pausing `:pause` ms, default 5, in between); `set_load/2`
  changes the function. Returns the pids.
  """
  def start_load(n, fun, opts \\ []) do
    pause = Keyword.get(opts, :pause, 5)

    for i <- 1..n do
      ExUnit.Callbacks.start_supervised!(
        %{id: {:load, make_ref()}, start: {Task, :start_link, [fn -> load(fun, pause) end]}},
        id: {:load, i, make_ref()}
      )
    end
  end

  @doc "Makes every load process call `fun` from its next round on."
  def set_load(pids, fun), do: Enum.each(pids, &send(&1, {:set, fun}))

  defp load(fun, pause) do
    fun =
      receive do
        {:set, new} -> new
      after
        0 -> fun
      end

    fun.()
    Process.sleep(pause)
    load(fun, pause)
  end

  @doc "Runs Lua with the Ecto domain's callbacks, as the watcher runs the model's code."
  def lua!(code, domain \\ HostApp.EctoDomain) do
    case Beamlens.Lua.eval(code, Beamlens.Watcher.lua_callbacks(domain)) do
      {:ok, value} -> value
      {:error, error} -> flunk("Lua failed: #{Exception.message(error)}")
    end
  end

  @doc "Polls `fun` every 50 ms for up to `ms` until it returns a truthy value, which it returns."
  def wait_for(fun, ms \\ 20_000) do
    deadline = System.monotonic_time(:millisecond) + ms
    do_wait_for(fun, deadline)
  end

  defp do_wait_for(fun, deadline) do
    cond do
      value = fun.() ->
        value

      System.monotonic_time(:millisecond) > deadline ->
        flunk("condition not met in time")

      true ->
        Process.sleep(50)
        do_wait_for(fun, deadline)
    end
  end
end
