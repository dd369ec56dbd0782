defmodule Beamlens.Lua.Inline do
  # The inline path of `Beamlens.Lua.eval/3`: the script runs in slices of
  # at most ~0.2 ms of interpreter time on the scheduler of the process that
  # steps it (`lua_inline_start/3`, `lua_inline_resume/2`; see
  # native/beamlens_core/src/sandbox/inline.rs), with no runner process and
  # no thread hop. Between slices the process bumps its reductions, so the
  # scheduler switches to other processes as it would for any busy process.
  #
  # The caller steps the script itself until its first callback call. It
  # then hands the run to a worker process, which runs that callback and
  # every later slice and callback of the run, and sends the caller the
  # final reply: a callback costs one NIF return and one NIF call, with no
  # message between processes. The caller never runs a callback, so it can
  # always enforce `:callback_timeout`: before each call the worker writes
  # the call's deadline into an atomics cell shared with the caller, and
  # clears it with a compare-and-swap when the call returns. When the
  # deadline passes, the caller swaps the cell to "claimed" instead (only
  # one of the two swaps wins), kills the worker, answers the call with a
  # timeout itself and carries on (handing the run to a new worker at the
  # next callback). A worker whose swap lost exits without touching the
  # run. The worker exits when the caller does: it checks its monitor
  # between steps, and a reaper process, started once the worker has had
  # the run for a millisecond, stops it if the caller dies while it is
  # inside a callback.
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

  # The caller's own bound on a run, past its `:timeout` (the native side
  # always ends the run by then; this only guards against a BeamLens bug).
  @reply_grace_ms 5_000

  # The atomics cell: no call in progress, or the caller claimed the call.
  @idle 0
  @claimed -1

  # How long the caller waits on a worker before it starts the worker's
  # reaper (`with_reaper/1`).
  @reaper_after_ms 1

  # `owner` is the monitor of the process the run is for, when the process
  # stepping it is a runner of `Beamlens.Lua.eval_async/3`: the run stops
  # (`:cancelled`) as soon as that process exits.
  @doc false
  @spec run(binary(), %{String.t() => function()}, map(), reference() | nil) ::
          {:done, {:ok, term()} | {:error, LuaError.t()}} | {:thread, map()} | :cancelled
  def run(code, callbacks, config, owner \\ nil) do
    started = System.monotonic_time()
    native_opts = Map.take(config, Beamlens.Lua.native_option_keys())
    # The native side names callbacks by their place in this list.
    {names, funs} = Enum.unzip(callbacks)

    case Native.lua_inline_start(code, names, native_opts) do
      :abandon ->
        {:thread, thread_config(config, started)}

      {:error, {kind, _, _} = reason} when kind in [:bad_argument, :busy] ->
        {:done, {:error, LuaError.from_native(reason)}}

      {:run, run, step} ->
        Runner.emit_start(config, callbacks, started)
        give_up_at = System.monotonic_time(:millisecond) + config.timeout + @reply_grace_ms
        calls = List.to_tuple(for fun <- funs, do: {fun, arity(fun)})
        state = %{run: run, calls: calls, config: config, give_up_at: give_up_at, owner: owner}
        finish(drive(step, state), callbacks, config, started)

      # The script failed before its first slice (a syntax error).
      native_result ->
        Runner.emit_start(config, callbacks, started)
        finish(native_result, callbacks, config, started)
    end
  rescue
    error in ErlangError ->
      # The NIF is not loaded: the threaded path reports it.
      _ = Beamlens.Runtime.not_loaded(error)
      {:thread, config}
  end

  defp finish(:abandon, _callbacks, config, started),
    do: {:thread, thread_config(config, started)}

  defp finish(:cancelled, callbacks, config, started) do
    Runner.emit_cancelled(config, callbacks, started, :inline)
    :cancelled
  end

  defp finish(native_result, callbacks, config, started) do
    result = Runner.convert(native_result, config)
    Runner.emit_stop(config, callbacks, started, native_result, result, :inline)
    {:done, result}
  end

  defp arity(fun) do
    {:arity, arity} = Function.info(fun, :arity)
    arity
  end

  # The threaded run gets what is left of the timeout, and its stop event
  # measures from the start of the inline attempt.
  defp thread_config(config, started) do
    elapsed = System.convert_time_unit(System.monotonic_time() - started, :native, :millisecond)

    config
    |> Map.put(:timeout, max(config.timeout - elapsed, 1))
    |> Map.put(:inline_started, started)
  end

  # In the caller: slices until the first callback call.
  defp drive(:yielded, %{owner: nil} = state),
    do: drive(Native.lua_inline_resume(state.run, :go), state)

  # A runner's mailbox holds only the run's own messages: this scan is short.
  defp drive(:yielded, %{owner: owner} = state) do
    receive do
      {:DOWN, ^owner, :process, _, _} -> :cancelled
    after
      0 -> drive(Native.lua_inline_resume(state.run, :go), state)
    end
  end

  defp drive({:callback, index, args, wait_ms}, state),
    do: hand_over({index, args, wait_ms}, state)

  defp drive(other, _state), do: other

  defp hand_over(call, %{run: run, calls: calls} = state) do
    caller = self()
    tag = make_ref()
    cell = :atomics.new(1, signed: true)
    origin = System.monotonic_time(:millisecond)

    {pid, monitor} =
      spawn_monitor(fn ->
        monitor = Process.monitor(caller)
        worker = %{run: run, calls: calls, cell: cell, origin: origin, caller_monitor: monitor}
        send(caller, {tag, call(call, worker)})
      end)

    handed = %{tag: tag, cell: cell, origin: origin, pid: pid, monitor: monitor, reaper?: false}
    await(handed, state)
  end

  defp await(%{tag: tag, pid: pid, monitor: monitor} = handed, %{owner: owner} = state) do
    receive do
      {^tag, native_result} ->
        Process.demonitor(monitor, [:flush])
        native_result

      {:DOWN, ^monitor, :process, ^pid, _reason} ->
        # Killed from outside: what it left the run in is unknown, so the
        # threaded path runs the script again.
        :abandon

      # The process the run is for exited (never matches when `owner` is
      # nil: a monitor's ref is never nil).
      {:DOWN, ^owner, :process, _, _} ->
        stop_worker(pid, monitor)
        :cancelled
    after
      wake_in(handed, state) -> check(with_reaper(handed), state)
    end
  end

  # Until the deadline of the call in progress, or a poll while the worker
  # runs slices (the next call's deadline is at least `callback_timeout`
  # away when it starts); at first, only until the reaper is due.
  defp wake_in(%{cell: cell, reaper?: reaper?} = handed, state) do
    wake =
      case :atomics.get(cell, 1) do
        deadline when deadline > @idle -> max(deadline - now(handed), 0)
        _ -> min(max(div(state.config.callback_timeout, 4), 1), 250)
      end

    if reaper?, do: wake, else: min(wake, @reaper_after_ms)
  end

  # A callback may never return. Should the caller die meanwhile, no code
  # of the caller runs again and the worker never reaches its next check:
  # a reaper process stops the worker then, and otherwise ends with it.
  # Runs that finish within @reaper_after_ms of the hand-over (most) do
  # without it: spawning it costs 10-30 us here, a third of a small run.
  defp with_reaper(%{reaper?: true} = handed), do: handed

  defp with_reaper(%{pid: worker} = handed) do
    caller = self()
    spawn(fn -> reap(caller, worker) end)
    %{handed | reaper?: true}
  end

  defp check(%{cell: cell, pid: pid, monitor: monitor} = handed, state) do
    deadline = :atomics.get(cell, 1)

    cond do
      System.monotonic_time(:millisecond) > state.give_up_at ->
        stop_worker(pid, monitor)
        message = "the script did not finish within #{state.config.timeout} ms (timeout)"
        {:error, {:timeout, message, %{}}}

      deadline > @idle and now(handed) >= deadline and
          :atomics.compare_exchange(cell, 1, deadline, @claimed) == :ok ->
        # The worker is still in the callback, or will exit without
        # touching the run: the run waits for this call's answer.
        stop_worker(pid, monitor)
        drive(Native.lua_inline_resume(state.run, :timeout), state)

      true ->
        await(handed, state)
    end
  end

  defp reap(caller, worker) do
    caller_monitor = Process.monitor(caller)
    worker_monitor = Process.monitor(worker)

    receive do
      {:DOWN, ^caller_monitor, :process, _, _} -> Process.exit(worker, :kill)
      {:DOWN, ^worker_monitor, :process, _, _} -> :ok
    end
  end

  defp stop_worker(pid, monitor) do
    Process.exit(pid, :kill)

    receive do
      {:DOWN, ^monitor, :process, ^pid, _} -> :ok
    end
  end

  # Milliseconds since the hand-over, plus one: always above @idle.
  defp now(%{origin: origin}), do: :erlang.monotonic_time(:millisecond) - origin + 1

  # In the worker: runs a callback, then the run's next steps.
  defp call({index, args, wait_ms}, %{cell: cell, run: run} = worker) do
    deadline = now(worker) + wait_ms
    :atomics.put(cell, 1, deadline)
    {fun, arity} = elem(worker.calls, index)
    answer = Runner.invoke(fun, arity, args)

    case :atomics.compare_exchange(cell, 1, deadline, @idle) do
      :ok -> work(Native.lua_inline_resume(run, answer), worker)
      # The caller timed this call out and answers it itself.
      _claimed -> exit(:normal)
    end
  end

  defp work(:yielded, worker) do
    caller_alive!(worker)
    work(Native.lua_inline_resume(worker.run, :go), worker)
  end

  defp work({:callback, index, args, wait_ms}, worker) do
    caller_alive!(worker)
    call({index, args, wait_ms}, worker)
  end

  defp work(other, _worker), do: other

  defp caller_alive!(%{caller_monitor: caller_monitor}) do
    receive do
      {:DOWN, ^caller_monitor, :process, _, _} -> exit(:normal)
    after
      0 -> :ok
    end
  end
end
