defmodule Beamlens.Lua.Inline do
  # The inline path of `Beamlens.Lua.eval/3`: the calling process runs the
  # script itself, in slices of at most ~0.2 ms of interpreter time on its
  # own scheduler (`lua_inline_start/3`, `lua_inline_resume/2`; see
  # native/beamlens_nif/src/sandbox/inline.rs), with no runner process and
  # no thread hop. Between slices it bumps its reductions, so the scheduler
  # switches to other processes as it would for any busy process.
  #
  # Callbacks run in a helper process of the run, as on the threaded path:
  # started at the first call, reused for the next ones, killed when a call
  # outlives its `:callback_timeout` (the next call starts a new one) and
  # at the end of the run. The caller waits for each answer in `receive`.
  #
  # When the native side cannot bound a step in time on a scheduler (a
  # large input to a library function, a loop inside a metamethod or a
  # `table.sort` comparator, a callback called where the script cannot be
  # suspended, a large callback answer), it abandons the run and `run/3`
  # returns `{:thread, config}`: the script runs again from the start on the
  # threaded path (`Beamlens.Lua.Runner`), within what is left of the
  # run's `:timeout`. Scripts and callbacks are read-only, so the only
  # visible effect is that callbacks may be called again; the stop event's
  # `path` metadata says which path finished the run.
  @moduledoc false

  alias Beamlens.{LuaError, Native}
  alias Beamlens.Lua.Runner

  @doc false
  @spec run(binary(), %{String.t() => function()}, map()) ::
          {:done, {:ok, term()} | {:error, LuaError.t()}} | {:thread, map()}
  def run(code, callbacks, config) do
    started = System.monotonic_time()
    native_opts = Map.take(config, Beamlens.Lua.native_option_keys())

    case Native.lua_inline_start(code, Map.keys(callbacks), native_opts) do
      :abandon ->
        {:thread, thread_config(config, started)}

      {:error, {kind, _, _} = reason} when kind in [:bad_argument, :busy] ->
        {:done, {:error, LuaError.from_native(reason)}}

      step ->
        Runner.emit_start(config, callbacks, started)
        state = %{callbacks: callbacks, helper: nil}

        case loop(step, state) do
          {:abandon, state} ->
            stop_helper(state)
            {:thread, thread_config(config, started)}

          {:done, native_result, state} ->
            stop_helper(state)
            result = Runner.convert(native_result, config)
            Runner.emit_stop(config, callbacks, started, native_result, result, :inline)
            {:done, result}
        end
    end
  rescue
    error in ErlangError ->
      # The NIF is not loaded: the threaded path reports it.
      _ = Beamlens.Runtime.not_loaded(error)
      {:thread, config}
  end

  # The threaded run gets what is left of the timeout, and its stop event
  # measures from the start of the inline attempt.
  defp thread_config(config, started) do
    elapsed = System.convert_time_unit(System.monotonic_time() - started, :native, :millisecond)

    config
    |> Map.put(:timeout, max(config.timeout - elapsed, 1))
    |> Map.put(:inline_started, started)
  end

  defp loop({:yielded, run}, state), do: loop(Native.lua_inline_resume(run, :go), state)

  defp loop({:callback, run, name, args, wait_ms}, state) do
    {answer, state} = call(state, name, args, wait_ms)
    loop(Native.lua_inline_resume(run, answer), state)
  end

  defp loop(:abandon, state), do: {:abandon, state}
  defp loop(result, state), do: {:done, result, state}

  defp call(state, name, args, wait_ms) do
    case Map.fetch(state.callbacks, name) do
      {:ok, fun} ->
        %{helper: {pid, monitor}} = state = ensure_helper(state)
        call = make_ref()
        send(pid, {:beamlens_call, call, fun, args})

        receive do
          {^call, answer} ->
            {answer, state}

          {:DOWN, ^monitor, :process, ^pid, reason} ->
            {{:error,
              "the callback process exited: " <> inspect(reason, limit: 10, printable_limit: 200)},
             %{state | helper: nil}}
        after
          wait_ms -> {:timeout, stop_helper(state)}
        end

      :error ->
        {{:error, "no callback is registered under this name"}, state}
    end
  end

  defp ensure_helper(%{helper: nil} = state) do
    caller = self()

    helper =
      spawn_monitor(fn ->
        caller_monitor = Process.monitor(caller)
        serve(caller, caller_monitor)
      end)

    %{state | helper: helper}
  end

  defp ensure_helper(state), do: state

  defp stop_helper(%{helper: nil} = state), do: state

  defp stop_helper(%{helper: {pid, monitor}} = state) do
    Process.exit(pid, :kill)
    Process.demonitor(monitor, [:flush])
    %{state | helper: nil}
  end

  # The helper: runs calls for the caller until the caller exits (or the
  # caller kills it).
  defp serve(caller, caller_monitor) do
    receive do
      {:beamlens_call, call, fun, args} ->
        send(caller, {call, Runner.invoke(fun, args)})
        serve(caller, caller_monitor)

      {:DOWN, ^caller_monitor, :process, _, _} ->
        :ok
    end
  end
end
