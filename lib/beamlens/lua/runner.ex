defmodule Beamlens.Lua.Runner do
  # One process per Lua run that does not run in its caller: every run of
  # `Beamlens.Lua.eval_async/3`, and the threaded runs of
  # `Beamlens.Lua.eval/3`. It turns the run's outcome into
  # `{ref, {:ok, value} | {:error, %LuaError{}}}` for the caller, and ends
  # with the run, or as soon as the caller exits (cancelling the run). It is
  # not linked to the caller: nothing that happens here can kill the
  # caller, and the caller's exit only reaches it through a monitor.
  #
  # A run of `eval_async/3` first goes the inline path
  # (`Beamlens.Lua.Inline`) in this process, exactly as `eval/3` does in its
  # caller; the rest of this comment is about the threaded path, which it
  # takes when the inline run is abandoned, and where this process serves
  # the run's callback requests.
  #
  # Callbacks run in a helper process of the run, started at the first
  # call and reused for the next ones (a process per call cost more than
  # the call itself). It is not linked to the runner, so a callback that
  # raises, exits or hangs costs the runner nothing: the runner waits at
  # most `:callback_timeout` for an answer, then kills the helper (the next
  # call starts a new one) and answers the script with an error. The
  # helper exits with the runner.
  #
  # The first call goes through the runner, which then names its helper to
  # the native run (`lua_set_helper/2`): later calls go from the Lua thread
  # straight to the helper, which answers through the NIF itself, saving two
  # process hops per call. The Lua thread bounds those calls itself: if the
  # helper exits (its reply handle is dropped with it) or does not answer
  # within the callback's time, the thread tells the runner
  # `{:lua_helper_failed, pid}` and the runner kills and forgets that
  # helper, so that the next call comes through the runner again.
  @moduledoc false

  alias Beamlens.{LuaError, Native, Telemetry}
  alias Beamlens.Lua.{Inline, Result}

  # If the native side never replied (it always does, at the latest
  # ~0.5 s after the run's timeout), the runner answers by itself.
  @reply_grace_ms 5_000

  @doc false
  # Starts the runner of a run for `caller` and returns at once. With
  # `:inline`, the runner first steps the script itself on the inline path
  # (`Beamlens.Lua.Inline`), as `Beamlens.Lua.eval/3` does in its caller,
  # and only takes the threaded path if the inline run is abandoned; with
  # `:thread`, it starts on the threaded path. Every outcome, errors
  # included, reaches the caller as `{ref, result}`.
  @spec start(pid(), binary(), %{String.t() => function()}, map(), :inline | :thread) ::
          {:ok, reference(), pid()}
  def start(caller, code, callbacks, config, path) do
    ref = make_ref()
    runner = spawn(fn -> serve(caller, ref, code, callbacks, config, path) end)
    {:ok, ref, runner}
  end

  defp serve(caller, ref, code, callbacks, config, path) do
    caller_monitor = Process.monitor(caller)
    base = %{caller: caller, caller_monitor: caller_monitor, ref: ref, callbacks: callbacks}

    try do
      if path == :inline do
        case Inline.run(code, callbacks, config, caller_monitor) do
          {:done, result} -> reply(base, result)
          :cancelled -> :ok
          {:thread, config} -> threaded(base, code, config)
        end
      else
        threaded(base, code, config)
      end
    rescue
      exception -> reply(base, internal(Exception.message(exception)))
    catch
      kind, reason -> reply(base, internal("#{kind}: #{inspect(reason, limit: 10)}"))
    end
  end

  defp threaded(base, code, config) do
    native_opts = Map.take(config, Beamlens.Lua.native_option_keys())
    # A run abandoned by the inline path started there (and its start
    # event is out).
    started = Map.get(config, :inline_started, System.monotonic_time())
    inline? = Map.has_key?(config, :inline_started)

    case start_native(code, Map.keys(base.callbacks), native_opts) do
      {:ok, native_ref, run} ->
        unless inline?, do: emit_start(config, base.callbacks, started)

        state =
          Map.merge(base, %{
            native_ref: native_ref,
            run: run,
            config: config,
            started: started,
            helper: nil,
            deadline: System.monotonic_time(:millisecond) + config.timeout + @reply_grace_ms
          })

        run(state)

      {:error, error} ->
        # Refused before it started: only a run the inline path began has
        # a start event to close.
        if inline? do
          emit_stop(config, base.callbacks, started, nil, {:error, error}, :thread)
        end

        reply(base, {:error, error})
    end
  end

  defp start_native(code, names, native_opts) do
    case Native.lua_eval(code, names, native_opts, self()) do
      {:ok, native_ref, run} -> {:ok, native_ref, run}
      {:error, reason} -> {:error, LuaError.from_native(reason)}
    end
  rescue
    error in ErlangError ->
      %{message: message} = Beamlens.Runtime.not_loaded(error)
      {:error, %LuaError{kind: :nif_not_loaded, message: message}}
  end

  defp reply(base, result) do
    Process.demonitor(base.caller_monitor, [:flush])
    send(base.caller, {base.ref, result})
  end

  defp internal(reason) do
    message = "the Lua runner failed (a BeamLens bug): #{reason}"
    {:error, %LuaError{kind: :internal, message: message}}
  end

  # Sending the reply is the last thing `loop/1` does, so a bug that raises
  # before it still gets exactly one (error) reply to the caller.
  defp run(state) do
    loop(state)
  rescue
    exception -> crashed(state, Exception.message(exception))
  catch
    kind, reason -> crashed(state, "#{kind}: #{inspect(reason, limit: 10)}")
  end

  defp crashed(state, reason) do
    Native.lua_cancel(state.run)
    send(state.caller, {state.ref, internal(reason)})
  end

  defp loop(%{native_ref: native_ref, caller_monitor: caller_monitor} = state) do
    receive do
      {^native_ref, {:lua_callback, reply, name, args}} ->
        case run_callback(state, name, args) do
          {{:finished, result}, state} ->
            finish(state, result)

          {:caller_down, state} ->
            cancel(state)

          {answer, state} ->
            # Small answers are converted right away; large ones go
            # through a dirty scheduler.
            with :too_large <- Native.lua_callback_reply(reply, answer) do
              Native.lua_callback_reply_large(reply, answer)
            end

            loop(state)
        end

      # The helper got a request straight from the Lua thread and did not
      # answer it in time (or exited): the next call comes here again.
      {^native_ref, {:lua_helper_failed, pid}} ->
        case state.helper do
          {^pid, _monitor} -> loop(stop_helper(state))
          _ -> loop(state)
        end

      {^native_ref, result} ->
        finish(state, result)

      {:DOWN, ^caller_monitor, :process, _, _} ->
        cancel(state)
    after
      max(state.deadline - System.monotonic_time(:millisecond), 0) ->
        Native.lua_cancel(state.run)

        finish(
          state,
          {:error,
           {:timeout, "the script did not finish within #{state.config.timeout} ms (timeout)",
            %{}}}
        )
    end
  end

  # The caller exited: the run stops, and nobody is left to reply to.
  defp cancel(state) do
    stop_helper(state)
    Native.lua_cancel(state.run)
    emit_cancelled(state.config, state.callbacks, state.started, :thread)
  end

  defp finish(state, native_result) do
    state = stop_helper(state)
    result = convert(native_result, state.config)
    Process.demonitor(state.caller_monitor, [:flush])
    emit_stop(state, native_result, result)
    send(state.caller, {state.ref, result})
  end

  @doc false
  @spec convert(term(), map()) :: {:ok, term()} | {:error, LuaError.t()}
  def convert({:ok, {value, output, stats}}, %{result: :full}) do
    {:ok, %Result{value: value, output: output, stats: Result.stats_from_native(stats)}}
  end

  def convert({:ok, {value, _output, _stats}}, _config), do: {:ok, value}
  def convert({:error, reason}, _config), do: {:error, LuaError.from_native(reason)}

  def convert(other, _config) do
    {:error, LuaError.from_native(other)}
  end

  # Runs one callback in the helper process and waits for it (bounded).
  # Returns `{answer, state}`.
  defp run_callback(state, name, args) do
    case Map.fetch(state.callbacks, name) do
      {:ok, fun} ->
        state = ensure_helper(state)
        {pid, _monitor} = state.helper
        # Later calls go from the Lua thread straight to the helper.
        Native.lua_set_helper(state.run, pid)
        call = make_ref()
        send(pid, {:beamlens_call, call, fun, args})
        await_callback(state, call)

      :error ->
        {{:error, "no callback is registered under this name"}, state}
    end
  end

  defp await_callback(state, call) do
    %{caller_monitor: caller_monitor, native_ref: native_ref, helper: {pid, monitor}} = state
    timeout = state.config.callback_timeout

    receive do
      {^call, answer} ->
        {answer, state}

      {:DOWN, ^monitor, :process, ^pid, reason} ->
        {{:error,
          "the callback process exited: " <> inspect(reason, limit: 10, printable_limit: 200)},
         %{state | helper: nil}}

      {:DOWN, ^caller_monitor, :process, _, _} ->
        {:caller_down, state}

      # The run stopped waiting (its deadline came first) and has ended.
      {^native_ref, {tag, _} = result} when tag in [:ok, :error] ->
        {{:finished, result}, state}
    after
      timeout -> {:timeout, stop_helper(state)}
    end
  end

  defp ensure_helper(%{helper: nil} = state) do
    runner = self()
    %{native_ref: native_ref, callbacks: callbacks} = state

    helper =
      spawn_monitor(fn ->
        helper(%{
          runner: runner,
          runner_monitor: Process.monitor(runner),
          native_ref: native_ref,
          callbacks: callbacks
        })
      end)

    %{state | helper: helper}
  end

  defp ensure_helper(%{helper: {pid, _monitor}} = state) do
    if Process.alive?(pid), do: state, else: ensure_helper(stop_helper(state))
  end

  defp stop_helper(%{helper: nil} = state), do: state

  defp stop_helper(%{helper: {pid, monitor}} = state) do
    Process.exit(pid, :kill)
    Process.demonitor(monitor, [:flush])
    %{state | helper: nil}
  end

  # Serves calls the runner hands over, and (once the runner has named it
  # with `lua_set_helper/2`) requests straight from the Lua thread, which
  # bounds their time itself.
  defp helper(%{runner: runner, runner_monitor: runner_monitor, native_ref: native_ref} = h) do
    receive do
      {:beamlens_call, call, fun, args} ->
        send(runner, {call, invoke(fun, args)})
        helper(h)

      {^native_ref, {:lua_callback, reply, name, args}} ->
        answer =
          case Map.fetch(h.callbacks, name) do
            {:ok, fun} -> invoke(fun, args)
            :error -> {:error, "no callback is registered under this name"}
          end

        with :too_large <- Native.lua_callback_reply(reply, answer) do
          Native.lua_callback_reply_large(reply, answer)
        end

        helper(h)

      {:DOWN, ^runner_monitor, :process, _, _} ->
        :ok
    end
  end

  # Lua passes as many arguments as the script wrote; missing ones are nil,
  # as in Lua itself.
  @doc false
  @spec invoke(function(), list()) :: {:ok, term()} | {:error, String.t()}
  def invoke(fun, args) do
    {:arity, arity} = Function.info(fun, :arity)
    invoke(fun, arity, args)
  end

  # `invoke/2` for a caller that knows the function's arity.
  @doc false
  @spec invoke(function(), arity(), list()) :: {:ok, term()} | {:error, String.t()}
  def invoke(fun, arity, args) do
    given = length(args)

    cond do
      given == arity ->
        {:ok, apply(fun, args)}

      given > arity ->
        {:error, "takes #{arity} argument#{if arity == 1, do: "", else: "s"}, got #{given}"}

      true ->
        {:ok, apply(fun, args ++ List.duplicate(nil, arity - given))}
    end
  rescue
    exception ->
      {:error, cut("#{inspect(exception.__struct__)}: #{Exception.message(exception)}")}
  catch
    kind, reason ->
      {:error, cut("#{kind}: #{inspect(reason, limit: 10, printable_limit: 200)}")}
  end

  # A callback's error message goes back to the script (and from there to
  # the model): at most @max_message bytes of valid UTF-8.
  @max_message 1_024

  defp cut(message) when byte_size(message) <= @max_message, do: message

  defp cut(message) do
    valid =
      case :unicode.characters_to_binary(binary_part(message, 0, @max_message)) do
        valid when is_binary(valid) -> valid
        {_incomplete_or_error, valid, _rest} -> valid
      end

    valid <> "... (message truncated)"
  end

  defp start_metadata(config, callbacks) do
    Map.merge(config.telemetry_metadata, %{callbacks: Map.keys(callbacks)})
  end

  @doc false
  @spec emit_start(map(), map(), integer()) :: :ok
  def emit_start(config, callbacks, started) do
    Telemetry.execute(
      [:lua, :execute, :start],
      %{system_time: System.system_time(), monotonic_time: started},
      start_metadata(config, callbacks)
    )
  end

  # The stop event of a run cancelled because its caller exited.
  @doc false
  @spec emit_cancelled(map(), map(), integer(), :inline | :thread) :: :ok
  def emit_cancelled(config, callbacks, started, path) do
    message = "the caller exited before the run finished"
    error = %LuaError{kind: :cancelled, message: message}
    emit_stop(config, callbacks, started, nil, {:error, error}, path)
  end

  defp emit_stop(state, native_result, result) do
    emit_stop(state.config, state.callbacks, state.started, native_result, result, :thread)
  end

  @doc false
  @spec emit_stop(map(), map(), integer(), term(), term(), :inline | :thread) :: :ok
  def emit_stop(config, callbacks, started, native_result, result, path) do
    stats =
      case native_result do
        {:ok, {_value, _output, stats}} ->
          Result.stats_from_native(stats)

        {:error, {_kind, _message, details}} when is_map(details) ->
          Result.stats_from_native(details)

        _ ->
          %{}
      end

    measurements =
      stats
      |> Map.take([:instructions, :callbacks, :memory])
      |> Map.put(:duration, System.monotonic_time() - started)
      |> Map.put(:monotonic_time, System.monotonic_time())

    error_kind =
      case result do
        {:ok, _} -> nil
        {:error, %LuaError{kind: kind}} -> kind
      end

    metadata =
      config
      |> start_metadata(callbacks)
      |> Map.merge(%{result: if(error_kind, do: :error, else: :ok), error: error_kind, path: path})

    Telemetry.execute([:lua, :execute, :stop], measurements, metadata)
  end
end
