defmodule Beamlens.LuaTest do
  # Some tests fill every Lua slot or watch node-wide scheduler events.
  use ExUnit.Case, async: false
  import Beamlens.Eventually

  alias Beamlens.{AsyncCaller, Lua, LuaError, Native}
  alias Beamlens.Lua.Result

  doctest Beamlens.Lua
  doctest Beamlens.LuaError

  defmodule Domain do
    @moduledoc false
    def top_processes(limit, sort_by) do
      for i <- 1..limit, do: %{rank: i, sort_by: sort_by, pid: self()}
    end
  end

  defmodule Watcher do
    @moduledoc false
    use GenServer

    def init(test), do: {:ok, test}

    def handle_call(:investigate, _from, test) do
      # The callback answers when the test lets it.
      callbacks = %{
        "slow" => fn ->
          send(test, {:callback_waiting, self()})
          receive do: (:answer -> "slow answer")
        end
      }

      {:ok, ref} = Beamlens.Lua.eval_async("return slow()", callbacks)
      {:reply, ref, test}
    end

    def handle_call(:ping, _from, test), do: {:reply, :pong, test}

    def handle_info({ref, result}, test) when is_reference(ref) do
      send(test, {:watcher_got, result})
      {:noreply, test}
    end
  end

  describe "results" do
    test "plain values convert to Elixir terms" do
      assert Lua.eval("return 42") == {:ok, 42}
      assert Lua.eval("return 1.5") == {:ok, 1.5}
      assert Lua.eval("return 'text'") == {:ok, "text"}
      assert Lua.eval("return true") == {:ok, true}
      assert Lua.eval("return nil") == {:ok, nil}
      assert Lua.eval("return {1, 2, {3}}") == {:ok, [1, 2, [3]]}
      assert Lua.eval("return {}") == {:ok, []}

      assert Lua.eval("return {name = 'x', list = {1, 2}, [3] = 'three'}") ==
               {:ok, %{"name" => "x", "list" => [1, 2], "3" => "three"}}

      assert Lua.eval("return 1, 'two'") == {:ok, [1, "two"]}
      assert Lua.eval("return print") == {:ok, "<function>"}
    end

    test "result: :full returns printed output and stats" do
      assert {:ok, %Result{value: 3, output: output, stats: stats}} =
               Lua.eval("print('hello', 1)\nprint(nil)\nreturn 1 + 2", %{}, result: :full)

      assert output == "hello\t1\nnil\n"
      assert stats.instructions >= 0
      assert stats.callbacks == 0
      assert stats.memory > 0
      assert stats.duration_us > 0
    end

    test "each run starts from a fresh state" do
      assert {:ok, 1} = Lua.eval("counter = (counter or 0) + 1 return counter")
      assert {:ok, 1} = Lua.eval("counter = (counter or 0) + 1 return counter")
      assert {:ok, nil} = Lua.eval("return counter")
    end
  end

  describe "callbacks" do
    test "dotted names are called with converted arguments" do
      callbacks = %{"beam.top_processes" => &Domain.top_processes/2}

      assert {:ok, %{"count" => 3, "first" => first}} =
               Lua.eval(
                 """
                 local top = beam.top_processes(3, "memory")
                 return {count = #top, first = top[1]}
                 """,
                 callbacks
               )

      assert %{"rank" => 1, "sort_by" => "memory", "pid" => "#PID<" <> _} = first
    end

    test "Elixir terms become Lua values: atoms are strings, tuples lists, structs maps" do
      callbacks = %{
        "data" => fn ->
          %{
            atom: :running,
            tuple: {:ok, 1},
            list: [1, nil, 3],
            ref: make_ref(),
            struct: %Range{first: 1, last: 2, step: 1},
            binary: "bytes"
          }
        end
      }

      code = """
      local d = data()
      return {d.atom, d.tuple[1], d.tuple[2], #d.list, type(d.ref), d.struct.last, d.binary}
      """

      assert {:ok, ["running", "ok", 1, list_length, "string", 2, "bytes"]} =
               Lua.eval(code, callbacks)

      # nil inside a list leaves a hole; the border is 1 or 3.
      assert list_length in [1, 3]
    end

    test "missing arguments are nil; extra arguments are an error" do
      callbacks = %{"pair" => fn a, b -> [a, b] end}
      assert Lua.eval("return pair(1)", callbacks) == {:ok, [1]}

      assert {:error, %LuaError{kind: :callback_error, message: message, line: 1}} =
               Lua.eval("return pair(1, 2, 3)", callbacks)

      assert message =~ "takes 2 arguments, got 3"
    end

    test "a raising callback gives a readable error the script can catch" do
      callbacks = %{"ets.info" => fn -> raise ArgumentError, "table does not exist" end}

      assert {:error, %LuaError{kind: :callback_error} = error} =
               Lua.eval("local x = 1\nreturn ets.info()", callbacks)

      assert Exception.message(error) ==
               "line 2: callback ets.info failed: ArgumentError: table does not exist"

      assert {:ok, [false, message]} =
               Lua.eval("local ok, err = pcall(ets.info)\nreturn {ok, err}", callbacks)

      assert message =~ "callback ets.info failed: ArgumentError"
    end

    test "a slow callback is killed at its timeout" do
      test = self()

      callbacks = %{
        "slow" => fn ->
          send(test, {:callback_pid, self()})
          Process.sleep(5_000)
        end
      }

      assert {:error, %LuaError{kind: :callback_timeout, message: message}} =
               Lua.eval("return slow()", callbacks, callback_timeout: 50)

      assert message =~ "did not answer within 50 ms"
      assert_receive {:callback_pid, pid}
      refute Process.alive?(pid)
    end

    test "a later call that hangs is bounded too, and the next call gets a new helper" do
      test = self()

      callbacks = %{
        "whoami" => fn -> send(test, {:ran_in, self()}) && "ok" end,
        "slow" => fn ->
          send(test, {:slow_in, self()})
          Process.sleep(5_000)
        end
      }

      # The first call goes through the runner; the later ones go from the
      # Lua thread straight to the helper, and are bounded there.
      assert {:ok, ["ok", false, "ok"]} =
               Lua.eval("return {whoami(), (pcall(slow)), whoami()}", callbacks,
                 callback_timeout: 50
               )

      assert_receive {:ran_in, first}
      assert_receive {:slow_in, ^first}
      assert_receive {:ran_in, second}
      assert second != first
      refute Process.alive?(first)

      assert {:error, %LuaError{kind: :callback_timeout, message: message}} =
               Lua.eval("whoami() return slow()", callbacks, callback_timeout: 50)

      assert message =~ "did not answer within 50 ms"
      assert_receive {:ran_in, helper}
      assert_receive {:slow_in, ^helper}
      refute Process.alive?(helper)
    end

    test "callbacks run outside the caller, in a helper replaced after a failure" do
      test = self()

      callbacks = %{
        "whoami" => fn -> send(test, {:ran_in, self()}) && "ok" end,
        "die" => fn -> Process.exit(self(), :kill) end
      }

      assert {:ok, ["ok", "ok", false, "ok"]} =
               Lua.eval("return {whoami(), whoami(), (pcall(die)), whoami()}", callbacks)

      assert_receive {:ran_in, first}
      assert_receive {:ran_in, second}
      assert_receive {:ran_in, third}
      assert first != self() and first == second
      # The helper was killed by the failing callback; a new one answered.
      assert third != first
      refute Process.alive?(first) or Process.alive?(third)
    end

    test "names that would shadow a Lua global are refused" do
      assert {:error, %LuaError{kind: :bad_argument, message: message}} =
               Lua.eval("return 1", %{"string.evil" => fn -> 1 end})

      assert message =~ "would shadow the Lua standard global `string`"
    end
  end

  describe "errors a model can act on" do
    test "syntax errors carry the line" do
      assert {:error, %LuaError{kind: :syntax, line: 2} = error} =
               Lua.eval("local x = 1\nlocal = 2\nreturn x")

      assert Exception.message(error) =~ ~r/^line 2: syntax error: /
    end

    test "runtime errors carry the line, without a traceback" do
      assert {:error, %LuaError{kind: :runtime, line: 3} = error} =
               Lua.eval("local t = {}\n\nreturn t.a.b")

      assert Exception.message(error) == "line 3: attempt to index nil with 'b'"
    end

    test "a script that returns nothing is told to return" do
      assert {:error, %LuaError{kind: :no_return, output: "42\n"} = error} = Lua.eval("print(42)")

      assert Exception.message(error) =~ "end it with a `return` statement"
    end

    test "broken limits say which limit and what to do" do
      assert {:error, %LuaError{kind: :instruction_limit, line: 1} = error} =
               Lua.eval("while true do end", %{}, max_instructions: 10_000)

      assert Exception.message(error) =~
               "line 1: the script ran more than 10000 instructions (instruction_limit)"

      assert {:error, %LuaError{kind: :memory_limit}} =
               Lua.eval("return #string.rep('x', 1e8)", %{}, max_memory: 1_000_000)

      assert {:error, %LuaError{kind: :output_limit, message: message}} =
               Lua.eval("return string.rep('x', 2000)", %{}, max_output: 1000)

      assert message =~ "return a summary"

      assert {:error, %LuaError{kind: :timeout}} =
               Lua.eval("while true do end", %{},
                 timeout: 50,
                 max_instructions: 10_000_000_000
               )
    end
  end

  describe "options" do
    test "are validated up front, naming the key" do
      assert {:error, %LuaError{kind: :bad_argument, message: message}} =
               Lua.eval("return 1", %{}, timeout: -1)

      assert message == "invalid option :timeout: expected an integer from 1 to 60000, got: -1"

      assert {:error, %LuaError{message: message}} = Lua.eval("return 1", %{}, timout: 5)
      assert message =~ "unknown option :timout (did you mean :timeout?)"

      assert {:error, %LuaError{message: message}} = Lua.eval("return 1", %{}, result: :all)
      assert message =~ "invalid option :result: expected :value or :full"

      assert {:error, %LuaError{message: message}} = Lua.eval("return 1", %{}, :nope)
      assert message =~ "options must be a keyword list"

      assert {:error, %LuaError{message: message}} = Lua.eval(:code)
      assert message =~ "code must be a string"

      assert {:error, %LuaError{message: message}} = Lua.eval("return 1", %{"f" => 1})
      assert message =~ "callbacks must map dotted names (strings) to functions"
    end

    test "defaults are documented values" do
      assert Lua.defaults() == [
               timeout: 2_000,
               max_instructions: 10_000_000,
               max_memory: 8_388_608,
               max_output: 65_536,
               max_callbacks: 200,
               callback_timeout: 1_000
             ]
    end
  end

  describe "eval_async/3" do
    test "replies exactly once with the caller's ref" do
      assert {:ok, ref} = Lua.eval_async("return 'done'")
      assert_receive {^ref, {:ok, "done"}}, 2_000
      refute_receive {^ref, _}, 50

      assert {:ok, ref} = Lua.eval_async("error('nope', 0)")
      assert_receive {^ref, {:error, %LuaError{kind: :runtime, message: "nope"}}}, 2_000
    end

    test "a GenServer stays responsive while its script waits on a callback" do
      watcher_pid =
        start_supervised!(%{id: Watcher, start: {GenServer, :start_link, [Watcher, self()]}})

      _ref = GenServer.call(watcher_pid, :investigate)
      assert_receive {:callback_waiting, callback}, 2_000
      # Its script waits on the callback; the GenServer answers meanwhile.
      assert GenServer.call(watcher_pid, :ping) == :pong
      refute_received {:watcher_got, _}
      send(callback, :answer)
      assert_receive {:watcher_got, {:ok, "slow answer"}}, 2_000
    end

    # A memory limit over the inline path's cap sends a run to the thread
    # pool; the default one lets it start inline.
    @threaded [max_memory: 32 * 1024 * 1024]

    for {path, extra, status} <- [
          {"inline", [], :lua_inline_status},
          {"threaded", @threaded, :lua_status}
        ] do
      test "the run is cancelled when the caller exits (#{path})" do
        status = fn -> apply(Native, unquote(status), []) end

        caller =
          AsyncCaller.start(
            "while true do end",
            %{},
            [timeout: 30_000, max_instructions: 10_000_000_000] ++ unquote(extra)
          )

        assert eventually(fn -> match?({1, _}, status.()) end, 100)
        Process.exit(caller, :kill)
        assert eventually(fn -> match?({0, _}, status.()) end, 100)
        assert {0, _} = Native.lua_status()
        assert {0, _} = Native.lua_inline_status()
      end
    end

    test "more runs than Lua slots are refused with :busy, not queued" do
      test = self()
      {_, capacity} = Native.lua_status()

      holders =
        for _ <- 1..capacity do
          spawn(fn ->
            result =
              Lua.eval_async(
                "while true do end",
                %{},
                [timeout: 30_000, max_instructions: 10_000_000_000] ++ @threaded
              )

            send(test, {:holding, result})
            Process.sleep(:infinity)
          end)
        end

      for _ <- holders, do: assert_receive({:holding, {:ok, _}}, 2_000)
      assert eventually(fn -> Native.lua_status() == {capacity, capacity} end, 100)

      # Inline runs count against the same capacity, so that callers see
      # one limit whichever path would run their script.
      assert {:error, %LuaError{kind: :busy, message: message}} = Lua.eval("return 1")
      assert message =~ "try again"
      assert {:ok, ref} = Lua.eval_async("return 1")
      assert_receive {^ref, {:error, %LuaError{kind: :busy}}}, 2_000

      Enum.each(holders, &Process.exit(&1, :kill))
      assert eventually(fn -> match?({0, _}, Native.lua_status()) end, 100)
      assert {:ok, 1} = Lua.eval("return 1")
    end

    test "a small script runs inline in the runner, a callback in another process" do
      test = self()
      handler = "eval-async-path-#{System.unique_integer()}"

      :telemetry.attach(
        handler,
        [:beamlens, :lua, :execute, :stop],
        fn _, _, metadata, _ -> send(test, {:stop, metadata.path}) end,
        nil
      )

      on_exit(fn -> :telemetry.detach(handler) end)

      callbacks = %{
        "where" => fn ->
          send(test, {:called_in, self()})
          1
        end
      }

      assert {:ok, ref, runner} =
               Lua.eval_async_monitored("return where() + where()", callbacks, [])

      assert_receive {^ref, {:ok, 2}}, 2_000
      assert_receive {:stop, :inline}
      assert_receive {:called_in, worker}
      assert_receive {:called_in, ^worker}
      refute worker in [self(), runner]

      # A run the inline path cannot take still finishes, on the thread pool.
      assert {:ok, ref} = Lua.eval_async("return 1", %{}, @threaded)
      assert_receive {^ref, {:ok, 1}}, 2_000
      assert_receive {:stop, :thread}
    end
  end

  describe "telemetry" do
    test "start and stop events carry stats and metadata" do
      handler = "lua-test-#{inspect(self())}"
      test = self()

      :telemetry.attach_many(
        handler,
        [[:beamlens, :lua, :execute, :start], [:beamlens, :lua, :execute, :stop]],
        &__MODULE__.forward_event/4,
        test
      )

      on_exit(fn -> :telemetry.detach(handler) end)

      assert {:ok, 1} =
               Lua.eval("return f()", %{"f" => fn -> 1 end}, telemetry_metadata: %{watcher: :beam})

      assert_receive {:event, [:beamlens, :lua, :execute, :start], %{system_time: _},
                      %{watcher: :beam, callbacks: ["f"]}}

      assert_receive {:event, [:beamlens, :lua, :execute, :stop], measurements,
                      %{watcher: :beam, result: :ok, error: nil}}

      assert %{duration: duration, instructions: _, callbacks: 1, memory: _} = measurements
      assert duration > 0

      assert {:error, _} = Lua.eval("error('x')", %{}, telemetry_metadata: %{watcher: :beam})

      assert_receive {:event, [:beamlens, :lua, :execute, :stop], _,
                      %{result: :error, error: :runtime}}
    end
  end

  test "no BeamLens NIF holds a scheduler while scripts and callbacks run" do
    callbacks = %{"list" => fn -> Enum.to_list(1..50_000) end}

    {_, culprits} =
      Beamlens.SchedulerMonitor.long_schedules_in_nifs(fn ->
        # Two at a time: on a 2-core machine, more CPU-bound Lua threads than
        # cores let the OS preempt the scheduler threads themselves, which
        # the monitor reports as long schedules of whatever process was running.
        tasks =
          for _ <- 1..2 do
            Task.async(fn ->
              Lua.eval(
                "local s = 0 for i = 1, 2e6 do s = s + i end local l = list() return #l + s",
                callbacks,
                max_instructions: 100_000_000
              )
            end)
          end

        for task <- tasks, do: assert({:ok, _} = Task.await(task, 10_000))
      end)

    assert culprits == [], "long schedules in BeamLens NIFs: #{inspect(culprits)}"
  end

  @doc false
  def forward_event(event, measurements, metadata, test) do
    send(test, {:event, event, measurements, metadata})
  end
end
