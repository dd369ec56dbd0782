defmodule Beamlens.LuaInlineTest do
  # `Beamlens.Lua.eval/3` runs small scripts in the caller, in slices, and
  # moves what it cannot bound on a scheduler to the threaded path. These
  # tests watch node-wide scheduler events, so they are not async.
  use ExUnit.Case, async: false

  alias Beamlens.{AsyncCaller, Lua, LuaError, Native, SchedulerMonitor}
  import Beamlens.Eventually

  setup do
    handler = "lua-inline-test-#{inspect(self())}"

    :telemetry.attach(
      handler,
      [:beamlens, :lua, :execute, :stop],
      &__MODULE__.forward_event/4,
      self()
    )

    on_exit(fn -> :telemetry.detach(handler) end)
  end

  @doc false
  def forward_event(_event, _measurements, metadata, test) do
    send(test, {:lua_stop, self(), metadata})
  end

  test "small scripts run inline, in the caller" do
    assert {:ok, 1} = Lua.eval("return 1")
    assert_receive {:lua_stop, pid, %{path: :inline, result: :ok}}
    assert pid == self()

    callbacks = %{"cb.value" => fn x -> x end}

    assert {:ok, 5050} =
             Lua.eval("local n = 0 for i = 1, 100 do n = n + cb.value(i) end return n", callbacks)

    assert_receive {:lua_stop, _, %{path: :inline, callbacks: ["cb.value"]}}

    # Errors come back as on the threaded path.
    assert {:error, %LuaError{kind: :runtime, line: 2}} = Lua.eval("local x\nreturn x.y")
    assert_receive {:lua_stop, _, %{path: :inline, result: :error, error: :runtime}}
  end

  # Each script would hold a scheduler for far longer than 50 ms if it ran
  # there in one go: it either yields in slices (inline) or is moved to a
  # thread, and still gets its answer.
  @blocking [
    {"a loop under pcall",
     "local s = 0 pcall(function() for i = 1, 2e7 do s = s + i end end) return s",
     {:ok, 200_000_010_000_000}, :inline},
    {"a loop in a metamethod",
     "local t = setmetatable({}, {__index = function() local n = 0 " <>
       "for i = 1, 3e6 do n = n + 1 end return n end}) return t.x", {:ok, 3_000_000}, :thread},
    {"a sort whose comparator never returns",
     "local t = {3, 2, 1} table.sort(t, function(a, b) while true do end end) return 1",
     {:error, [:instruction_limit, :timeout]}, :thread},
    {"gsub with a function that loops",
     "local _, n = string.rep('x', 1000):gsub('.', function() for i = 1, 2000 do end end) " <>
       "return n", {:ok, 1000}, :thread},
    {"a search over a large string", "return (string.rep('x', 1e7)):find('.-y')",
     {:error, [:instruction_limit, :timeout]}, :thread}
  ]

  for {name, code, expected, path} <- @blocking do
    test "never holds the scheduler: #{name}" do
      assert_bounded(unquote(code), unquote(Macro.escape(expected)), unquote(path))
    end
  end

  test "a callback may be called again when the run moves to a thread" do
    test = self()
    callbacks = %{"cb.value" => fn x -> send(test, {:called, x}) && x end}

    code = """
    local a = cb.value(1)
    local t = setmetatable({}, {__index = function() return cb.value(2) end})
    return a + t.x
    """

    assert {:ok, 3} = Lua.eval(code, callbacks)
    assert_receive {:lua_stop, _, %{path: :thread}}
    # Once inline (abandoned at the call in the metamethod), then on the thread.
    assert_receive {:called, 1}
    assert_receive {:called, 1}
    assert_receive {:called, 2}
    refute_receive {:called, _}, 50
  end

  test "callbacks run in one worker of the run, never in the caller" do
    test = self()
    callbacks = %{"cb.where" => fn -> send(test, {:ran_in, self()}) && 1 end}

    assert {:ok, 3} = Lua.eval("return cb.where() + cb.where() + cb.where()", callbacks)
    assert_receive {:lua_stop, ^test, %{path: :inline}}
    assert_receive {:ran_in, worker}
    assert_receive {:ran_in, ^worker}
    assert_receive {:ran_in, ^worker}
    assert worker != test
    refute Process.alive?(worker)
  end

  test "the worker stops when the caller exits" do
    test = self()

    caller =
      spawn(fn ->
        caller = self()

        callbacks = %{
          "cb.wait" => fn ->
            # Returns once the caller is gone; the script then loops for
            # up to a minute unless the worker notices.
            monitor = Process.monitor(caller)
            send(test, {:worker, self()})

            receive do
              {:DOWN, ^monitor, :process, _, _} -> 1
            end
          end
        }

        Lua.eval("cb.wait() local s = 0 while true do s = s + 1 end", callbacks,
          timeout: 60_000,
          max_instructions: 10_000_000_000,
          callback_timeout: 60_000
        )
      end)

    assert_receive {:worker, worker}, 5_000
    monitor = Process.monitor(worker)
    Process.exit(caller, :kill)
    assert_receive {:DOWN, ^monitor, :process, ^worker, _}, 5_000
  end

  # eval/3 runs in the caller (its reaper stops the worker), eval_async/3
  # in a runner process (which stops it when the caller exits).
  for api <- [:eval, :eval_async] do
    test "a worker stuck in a callback is stopped when the caller exits (#{api})" do
      test = self()

      hold = fn ->
        send(test, {:holding, self()})
        Process.sleep(:infinity)
      end

      opts = [timeout: 60_000, callback_timeout: 60_000]
      code = "return hold()"

      caller =
        case unquote(api) do
          :eval -> spawn(fn -> Lua.eval(code, %{"hold" => hold}, opts) end)
          :eval_async -> AsyncCaller.start(code, %{"hold" => hold}, opts)
        end

      assert_receive {:holding, worker}, 5_000
      assert {1, _} = Native.lua_inline_status()
      # The reaper starts after a millisecond (a caller of eval/3 killed
      # within that millisecond of a hung first call leaves the worker
      # hanging): it is in place once it monitors the worker too.
      assert eventually(fn -> length(Process.info(worker, :monitored_by) |> elem(1)) == 2 end)
      monitor = Process.monitor(worker)
      Process.exit(caller, :kill)
      assert_receive {:DOWN, ^monitor, :process, ^worker, :killed}, 5_000
      # The run went with them: its inline slot is free again.
      assert eventually(fn -> match?({0, _}, Native.lua_inline_status()) end, 100)
    end
  end

  # Runs `code` in a fresh process under a long-schedule monitor. On a
  # loaded machine the OS may preempt a scheduler thread at any time, which
  # shows up as a long schedule of whatever ran; a script that holds the
  # scheduler does so on every attempt, so one clean attempt of five is
  # enough.
  defp assert_bounded(code, expected, path, attempts \\ 5) do
    {result, long} = monitored(code)
    assert_receive {:lua_stop, _, %{path: ^path}}, 5_000

    case {result, expected} do
      {{:ok, value}, {:ok, value}} -> :ok
      {{:error, %LuaError{kind: kind}}, {:error, kinds}} -> assert kind in kinds
      _ -> flunk("#{code}: expected #{inspect(expected)}, got #{inspect(result)}")
    end

    cond do
      long == [] -> :ok
      attempts > 1 -> assert_bounded(code, expected, path, attempts - 1)
      true -> flunk("#{code} held its scheduler: #{inspect(long)}")
    end
  end

  defp monitored(code) do
    test = self()

    {{pid, result}, reports} =
      SchedulerMonitor.long_schedules(
        fn ->
          {pid, monitor} =
            spawn_monitor(fn ->
              result =
                Lua.eval(code, %{},
                  max_memory: 16 * 1024 * 1024,
                  max_instructions: 100_000_000,
                  timeout: 5_000
                )

              send(test, {:result, self(), result})
            end)

          result = receive do: ({:result, ^pid, result} -> result)
          receive do: ({:DOWN, ^monitor, :process, ^pid, _} -> :ok)
          {pid, result}
        end,
        50
      )

    {result, for({^pid, info} <- reports, do: info)}
  end
end
