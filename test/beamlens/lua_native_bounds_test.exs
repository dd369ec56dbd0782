defmodule Beamlens.LuaNativeBoundsTest do
  # Scripts that aim at the native code under the sandbox: library functions
  # Luau runs in C without an interrupt, print and callback argument
  # conversion, error messages, JSON escaping. Each case asserts its outcome,
  # a bound on wall time, that the run's Lua slot is free again, and a bound
  # on the memory of this OS process measured by the kernel (VmHWM), so that
  # allocations outside the Lua allocator are caught too. The cases that
  # would abort or exhaust the VM if they regressed run in a separate OS
  # process under `ulimit -v` (Beamlens.IsolatedVm).
  use ExUnit.Case, async: false
  import Beamlens.Eventually

  alias Beamlens.{AsyncCaller, IsolatedVm, Lua, LuaError, Native, ProcStatus}

  @max_memory 16 * 1024 * 1024

  @limits [
    timeout: 500,
    # Generous: the wall clock or the memory limit must stop these scripts.
    max_instructions: 10_000_000_000,
    max_memory: @max_memory,
    max_output: 64 * 1024,
    callback_timeout: 400
  ]

  # The runner answers by itself 5 s after the timeout; every case must end
  # well before that (within its timeout plus this), through the native
  # side's own limits.
  @wall_ms 3_000
  # Searches that are linear now and were quadratic (hours) before: a
  # generous limit, as the debug build on a loaded machine is slow.
  @linear_ms 3_000
  # The script's memory limit plus room for the BEAM's own allocations.
  @peak_kb div(@max_memory, 1024) + 64 * 1024

  @callbacks %{"cb.echo" => &__MODULE__.echo/1, "cb.raise_big" => &__MODULE__.raise_big/0}

  def echo(x), do: x
  def raise_big, do: raise(String.duplicate("é", 5_000_000))

  # {name, code, expected outcomes, extra options}
  @cases [
    {"print of thousands of large arguments",
     ~S|local s = string.rep("x", 60000) local t = {} for i = 1, 7000 do t[i] = s end print(unpack(t)) return 1|,
     [:output_limit], []},
    {"print of one argument over the limit", ~S|print(string.rep("\255", 1e6)) return 1|,
     [:output_limit], []},
    {"callback arguments over the limit in total",
     ~S|local s = string.rep("x", 1000) local t = {} for i = 1, 3000 do t[i] = s end return cb.echo(unpack(t))|,
     [:callback_error], []},
    {"callback argument that grows when escaped", ~S|return cb.echo(string.rep("\1", 20000))|,
     [:callback_error], []},
    {"error with a huge message", ~S|error(string.rep("\255", 12 * 1024 * 1024))|, [:runtime],
     [max_memory: 64 * 1024 * 1024]},
    {"error message rebuilt after pcall",
     ~S|local ok, e = pcall(error, string.rep("y", 4e6)) error(e .. "!")|, [:runtime], []},
    {"callback raising a huge message", ~S|return cb.raise_big()|, [:callback_error], []},
    {"table.move over a huge range", ~S|table.move({}, 1, 2147483646, 2, {}) return 1|,
     [:ok, :timeout], []},
    {"table.move then a loop", ~S|table.move({}, 1, 2147483646, 2, {}) while true do end|,
     [:timeout], []},
    {"plain string.find, quadratic in C",
     ~S|local s = string.rep("a", 3e6) return string.find(s, string.rep("a", 1e6) .. "b", 1, true)|,
     [:ok], [timeout: @linear_ms]},
    {"string.find without specials, quadratic in C",
     ~S|local s = string.rep("a", 3e6) return string.find(s, string.rep("a", 1e6) .. "b")|, [:ok],
     [timeout: @linear_ms]},
    {"string.split, quadratic in C",
     ~S|local s = string.rep("a", 3e6) return #s:split(string.rep("a", 1e6) .. "b")|, [:ok],
     [timeout: @linear_ms]},
    {"string.split into millions of pieces", ~S|return #string.rep(",", 4e6):split(",")|,
     [:memory_limit], []},
    {"%b scanning megabytes per step", ~S|return string.find(string.rep("a", 6e6), "%bab")|,
     [:timeout], [max_memory: 64 * 1024 * 1024]},
    {".- backtracking over 3 MB", ~S|return string.find(string.rep("a", 3e6), ".-b")|, [:timeout],
     []},
    {"gsub with a growing replacement", ~S|return #string.rep("a", 1e6):gsub("a", "%0%0%0%0")|,
     [:memory_limit], []},
    {"table.sort without a comparator",
     ~S|local t = table.create(1e6, 1) for i = 1, #t, 3 do t[i] = i end table.sort(t) table.sort(t) table.sort(t) while true do end|,
     [:timeout, :memory_limit], []},
    {"string.rep of the empty string", ~S|return #string.rep("", 2147483647)|, [:ok], []},
    {"string.rep past the memory limit", ~S|return #string.rep("ab", 2e9)|,
     [:memory_limit, :runtime], []},
    {"string.format of a huge string",
     ~S|return #string.format("%s%s", string.rep("x", 6e6), string.rep("y", 6e6))|,
     [:memory_limit], []},
    {"table.concat with a huge separator",
     ~S|local t = table.create(1000, "x") return #table.concat(t, string.rep(",", 1e5))|,
     [:memory_limit], []},
    {"unpack of a huge range", ~S|return select("#", unpack({}, 1, 2147483647))|, [:runtime], []},
    {"string.byte of a large string", ~S|return select("#", string.rep("x", 1e6):byte(1, -1))|,
     [:runtime], []},
    {"result that grows when escaped", ~S|return string.rep("\1", 20000)|, [:output_limit], []},
    {"result of invalid UTF-8", ~S|return string.rep("\255", 30000)|, [:output_limit], []},
    {"buffer.create past the limit", ~S|return buffer.len(buffer.create(1e9))|,
     [:memory_limit, :runtime], []}
  ]

  test "at least 20 native-path cases" do
    assert length(@cases) >= 20
  end

  for {name, code, expected, opts} <- @cases do
    test "bounded: #{name}" do
      bounded(unquote(name), unquote(code), unquote(expected), unquote(opts))
    end
  end

  test "eight table.move runs at once end by their deadline and free every slot" do
    code = ~S|table.move({}, 1, 2147483646, 2, {}) while true do end|

    {results, usage} =
      ProcStatus.measure(fn ->
        1..8
        |> Enum.map(fn _ -> Task.async(fn -> Lua.eval(code, %{}, @limits) end) end)
        |> Enum.map(&Task.await(&1, 10_000))
      end)

    assert Enum.all?(results, &match?({:error, %LuaError{kind: :timeout}}, &1)),
           inspect(results, limit: 5)

    assert usage.wall_ms < @wall_ms * 2, "took #{usage.wall_ms} ms"
    assert eventually(fn -> match?({0, _}, Native.lua_status()) end)
    assert {:ok, 1} = Lua.eval("return 1")
  end

  # With this memory limit, the inline path (16 MiB at most) leaves the run
  # to the thread pool.
  for {path, max_memory, status} <- [
        {"inline", @max_memory, :lua_inline_status},
        {"threaded", 2 * @max_memory, :lua_status}
      ] do
    test "a cancelled run stops inside table.move and frees its slot (#{path})" do
      status = fn -> apply(Native, unquote(status), []) end

      caller =
        AsyncCaller.start(
          ~S|table.move({}, 1, 2147483646, 2, {}) while true do end|,
          %{},
          Keyword.merge(@limits, timeout: 60_000, max_memory: unquote(max_memory))
        )

      assert eventually(fn -> match?({1, _}, status.()) end)
      started = System.monotonic_time(:millisecond)
      Process.exit(caller, :kill)
      assert eventually(fn -> match?({0, _}, status.()) end)
      assert System.monotonic_time(:millisecond) - started < @wall_ms
    end
  end

  describe "in a separate OS process (could abort the VM if it regressed)" do
    @describetag timeout: 120_000

    test "print(unpack(t)) with 6,000 references to a 7 MiB string" do
      # The issue's abort: the line would be 120 GB once converted.
      assert {:ok, result, info} =
               IsolatedVm.eval(
                 ~S'''
                 code = ~S"""
                 local s = string.rep("\255", 7 * 1024 * 1024)
                 local t = {}
                 for i = 1, 6000 do t[i] = s end
                 print(unpack(t))
                 return 1
                 """
                 result = Beamlens.Lua.eval(code, %{}, max_memory: 64 * 1024 * 1024)
                 # The native thread must be done too, not only the reply.
                 Process.sleep(200)
                 {result, Beamlens.Native.lua_status()}
                 ''',
                 memory_mb: 3072
               )

      assert {{:error, %LuaError{kind: :output_limit}}, {0, _}} = result
      assert info.vm_hwm_kb < 64 * 1024 + 256 * 1024, "peak #{info.vm_hwm_kb} kB"
    end

    test "callback arguments: 6,000 references to a 7 MiB string" do
      assert {:ok, result, info} =
               IsolatedVm.eval(
                 ~S'''
                 code = ~S"""
                 local s = string.rep("\255", 7 * 1024 * 1024)
                 local t = {}
                 for i = 1, 6000 do t[i] = s end
                 return cb.echo(unpack(t))
                 """
                 Beamlens.Lua.eval(code, %{"cb.echo" => fn x -> x end}, max_memory: 64 * 1024 * 1024)
                 ''',
                 memory_mb: 3072
               )

      assert {:error, %LuaError{kind: :callback_error, message: message}} = result
      assert message =~ "in total"
      assert info.vm_hwm_kb < 64 * 1024 + 256 * 1024, "peak #{info.vm_hwm_kb} kB"
    end

    test "an error message of 100 MiB of invalid UTF-8" do
      assert {:ok, result, info} =
               IsolatedVm.eval(
                 ~S'''
                 Beamlens.Lua.eval(~S|error(string.rep("\255", 100 * 1024 * 1024))|, %{},
                   max_memory: 256 * 1024 * 1024, timeout: 10_000)
                 ''',
                 memory_mb: 3072
               )

      assert {:error, %LuaError{kind: :runtime, message: message}} = result
      assert byte_size(message) < 2_200
      assert info.vm_hwm_kb < 256 * 1024 + 256 * 1024, "peak #{info.vm_hwm_kb} kB"
    end
  end

  defp bounded(name, code, expected, opts) do
    limits = Keyword.merge(@limits, opts)
    peak_kb = div(Keyword.fetch!(limits, :max_memory), 1024) + 64 * 1024

    {result, usage} = ProcStatus.measure(fn -> Lua.eval(code, @callbacks, limits) end)

    outcome =
      case result do
        {:ok, _} -> :ok
        {:error, %LuaError{kind: kind}} -> kind
      end

    assert outcome in expected,
           "#{name}: expected #{inspect(expected)}, got #{inspect(result, limit: 8, printable_limit: 300)}"

    wall_ms = @wall_ms + Keyword.fetch!(limits, :timeout)
    assert usage.wall_ms < wall_ms, "#{name} took #{usage.wall_ms} ms"
    assert usage.peak_growth_kb < max(peak_kb, @peak_kb), "#{name}: #{inspect(usage)}"

    with {:error, %LuaError{message: message}} <- result do
      assert byte_size(message) < 2_200, "#{name}: message of #{byte_size(message)} bytes"
    end

    # The native thread has stopped, not only the reply arrived.
    assert eventually(fn -> match?({0, _}, Native.lua_status()) end)
  end
end
