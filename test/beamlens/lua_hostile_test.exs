defmodule Beamlens.LuaHostileTest do
  # Scripts an LLM (or an attacker steering one) might write. Each must end
  # with the expected outcome within its limits; afterwards the VM, the
  # native runtime and the process table must be as before.
  use ExUnit.Case, async: false
  import Beamlens.Eventually

  alias Beamlens.{Lua, LuaError, Native}

  @limits [
    timeout: 500,
    max_instructions: 1_000_000,
    max_memory: 4 * 1024 * 1024,
    max_output: 16 * 1024,
    max_callbacks: 20,
    callback_timeout: 200
  ]

  # Any run must be over well within this (ms), whatever it does.
  @deadline 1_500

  @callbacks %{
    "cb.one" => &__MODULE__.one/0,
    "cb.raise" => &__MODULE__.raise_error/0,
    "cb.exit" => &__MODULE__.exit_process/0,
    "cb.sleep" => &__MODULE__.sleep/0,
    "cb.huge" => &__MODULE__.huge/0,
    "cb.deep" => &__MODULE__.deep/0,
    "cb.echo" => &__MODULE__.echo/1
  }

  def one, do: 1
  def raise_error, do: raise(ArgumentError, "no such table")
  def exit_process, do: exit(:boom)
  def sleep, do: Process.sleep(10_000)
  def huge, do: Enum.to_list(1..300_000)
  def deep, do: Enum.reduce(1..100, :leaf, &%{"level" => &1, "next" => &2})
  def echo(x), do: x

  # {name, code, expected outcomes}: `:ok` or error kinds.
  @scripts [
    # --- escapes: nothing outside the sandbox is reachable -----------------
    {"io.open", ~S|return io.open("/etc/passwd")|, [:runtime]},
    {"io.popen", ~S|return io.popen("id")|, [:runtime]},
    {"os.execute", ~S|return os.execute("id")|, [:runtime]},
    {"os.exit", ~S|os.exit(1) return 1|, [:runtime]},
    {"os.getenv", ~S|return os.getenv("HOME")|, [:runtime]},
    {"os.remove", ~S|return os.remove("/tmp/x")|, [:runtime]},
    {"require", ~S|return require("os")|, [:runtime]},
    {"package.loaded", ~S|return package.loaded|, [:runtime]},
    {"loadstring", ~S|return loadstring("return 1")()|, [:runtime]},
    {"load", ~S|return load("return 1")()|, [:runtime]},
    {"dofile", ~S|return dofile("/etc/passwd")|, [:runtime]},
    {"loadfile", ~S|return loadfile("/etc/passwd")|, [:runtime]},
    {"getfenv", ~S|return getfenv(1)|, [:runtime]},
    {"setfenv", ~S|setfenv(1, {}) return 1|, [:runtime]},
    {"debug.getinfo", ~S|return debug.getinfo(1)|, [:runtime]},
    {"debug.sethook", ~S|debug.sethook(function() end, "", 1) return 1|, [:runtime]},
    {"string.dump", ~S|return string.dump(function() end)|, [:runtime]},
    {"collectgarbage collect", ~S|collectgarbage("collect") return 1|, [:runtime]},
    {"collectgarbage stop", ~S|collectgarbage("stop") return 1|, [:runtime]},
    {"rawset on a library", ~S|rawset(string, "rep", nil) return 1|, [:runtime]},
    {"string metatable", ~S|getmetatable("").__index = {} return 1|, [:runtime]},
    {"setmetatable on a library", ~S|setmetatable(math, {}) return 1|, [:runtime]},
    {"_G write", ~S|_G.print = nil return 1|, [:runtime]},
    {"bytecode header", "\e" <> "Lua" <> <<0x54, 0, 0x19, 0x93>>, [:syntax]},
    {"luau bytecode", <<6, 3, 0, 1, 0, 0, 0>>, [:syntax]},
    # --- metatable tricks ---------------------------------------------------
    {"__gc on a table", ~S|setmetatable({}, {__gc = function() while true do end end}) return 1|,
     [:ok]},
    {"__gc on a proxy",
     ~S|local p = newproxy(true) getmetatable(p).__gc = function() while true do end end p = nil return 1|,
     [:ok, :runtime]},
    {"__index chain loop",
     ~S|local t = setmetatable({}, {}) getmetatable(t).__index = t return t.x|, [:runtime]},
    {"__index recursion",
     ~S|local t = setmetatable({}, {__index = function(t, k) return t[k] end}) return t.x|,
     [:runtime, :memory_limit]},
    {"__tostring endless loop",
     ~S|print(setmetatable({}, {__tostring = function() while true do end end})) return 1|,
     [:instruction_limit]},
    {"error object with looping __tostring",
     ~S|error(setmetatable({}, {__tostring = function() while true do end end}))|,
     [:instruction_limit]},
    # --- runaway CPU ----------------------------------------------------------
    {"while true", ~S|while true do end|, [:instruction_limit]},
    {"repeat until false", ~S|local n = 0 repeat n = n + 1 until false|, [:instruction_limit]},
    {"numeric for to huge", ~S|local s = 0 for i = 1, 1e15 do s = s + i end return s|,
     [:instruction_limit]},
    {"pcall swallowing the limit",
     ~S|for i = 1, 1e9 do pcall(function() while true do end end) end return "survived"|,
     [:instruction_limit]},
    {"xpcall with a looping handler",
     ~S|return xpcall(function() error("x") end, function() while true do end end)|,
     [:instruction_limit]},
    {"deep recursion", ~S|local function f(n) return 1 + f(n + 1) end return f(1)|,
     [:runtime, :memory_limit]},
    {"mutual recursion through pcall", ~S|local function f() return pcall(f) end return f()|,
     [:ok, :runtime, :memory_limit, :instruction_limit]},
    {"coroutine endless loop", ~S|coroutine.wrap(function() while true do end end)() return 1|,
     [:instruction_limit]},
    {"coroutine bomb",
     ~S|local cs = {} for i = 1, 1e7 do cs[i] = coroutine.create(function() end) end return #cs|,
     [:memory_limit]},
    {"nested coroutines", ~S|local function f() return coroutine.wrap(f)() end return f()|,
     [:runtime, :memory_limit]},
    {"yield at top level", ~S|coroutine.yield(1) return 1|, [:runtime]},
    {"table.sort with a bad comparator",
     ~S|local t = {} for i = 1, 1000 do t[i] = i end table.sort(t, function() return true end) return 1|,
     [:ok, :runtime]},
    {"unpack a huge range", ~S|return unpack({}, 1, 1e8)|, [:runtime]},
    # --- pathological patterns -------------------------------------------------
    {"string.find backtracking",
     ~S|local s = string.rep("a", 5000) return string.find(s, ".-.-.-.-.-.-.-.-b")|,
     [:instruction_limit, :timeout]},
    {"string.match backtracking",
     ~S|local s = string.rep("a", 5000) return s:match("^(.-)(.-)(.-)(.-)(.-)x$")|,
     [:instruction_limit, :timeout]},
    {"gsub backtracking",
     ~S|local s = string.rep("ab", 3000) return (s:gsub("a.-a.-a.-a.-c", ""))|,
     [:instruction_limit, :timeout]},
    {"gmatch over a large subject",
     ~S|local n = 0 for w in string.rep("a", 100000):gmatch(".-.-.-b") do n = n + 1 end return n|,
     [:instruction_limit, :timeout]},
    # --- memory bombs ------------------------------------------------------------
    {"string.rep", ~S|return #string.rep("x", 1e9)|, [:memory_limit]},
    {"string.rep of a rep", ~S|return #string.rep("x", 1e5):rep(1e4)|, [:memory_limit]},
    {"string doubling", ~S|local s = "x" while true do s = s .. s end|, [:memory_limit]},
    {"table growth", ~S|local t = {} for i = 1, 1e8 do t[i] = i end return #t|, [:memory_limit]},
    {"table of strings",
     ~S|local t = {} for i = 1, 1e8 do t[i] = tostring(i) .. "xxxxxxxx" end return #t|,
     [:memory_limit]},
    {"table.create", ~S|return #table.create(1e8, 0)|, [:memory_limit, :runtime]},
    {"buffer.create", ~S|return buffer.len(buffer.create(1e8))|, [:memory_limit, :runtime]},
    {"table.concat of many",
     ~S|local t = {} for i = 1, 2e5 do t[i] = "xxxxxxxxxxxxxxxxxxxx" end return #table.concat(t)|,
     [:memory_limit]},
    # --- huge outputs ---------------------------------------------------------------
    {"huge string result", ~S|return string.rep("x", 1e6)|, [:output_limit]},
    {"huge table result", ~S|local t = {} for i = 1, 1e5 do t[i] = i end return t|,
     [:output_limit]},
    {"cyclic result", ~S|local t = {} t.self = t return t|, [:output_limit]},
    {"print flood", ~S|while true do print("spam spam spam spam") end|, [:output_limit]},
    {"one huge print", ~S|print(string.rep("x", 1e6)) return 1|, [:output_limit]},
    # --- callbacks ----------------------------------------------------------------------
    {"callback in a loop", ~S|local n = 0 while true do n = n + cb.one() end|, [:callback_limit]},
    {"callback loop with pcall", ~S|for i = 1, 1e6 do pcall(cb.one) end return 1|,
     [:callback_limit]},
    {"callback raising", ~S|return cb.raise()|, [:callback_error]},
    {"callback exiting", ~S|return cb.exit()|, [:callback_error]},
    {"callback too slow", ~S|return cb.sleep()|, [:callback_timeout]},
    {"slow callbacks until the deadline", ~S|for i = 1, 100 do pcall(cb.sleep) end return 1|,
     [:timeout]},
    {"callback answer too large", ~S|return #cb.huge()|, [:callback_error]},
    {"callback answer too deep", ~S|return cb.deep()|, [:callback_error]},
    {"callback with too many arguments", ~S|return cb.echo(1, 2, 3)|, [:callback_error]},
    {"callback argument too large", ~S|return cb.echo(string.rep("x", 1e6))|, [:callback_error]},
    {"cyclic callback argument", ~S|local t = {} t[1] = t return cb.echo(t)|, [:callback_error]},
    {"replacing a callback", ~S|cb.one = function() return 2 end return cb.one()|, [:runtime]},
    # --- the compiler -------------------------------------------------------------------
    {"deeply nested expression",
     "return " <> String.duplicate("(", 5_000) <> "1" <> String.duplicate(")", 5_000), [:syntax]},
    {"deeply nested tables",
     "return " <> String.duplicate("{", 5_000) <> String.duplicate("}", 5_000),
     [:syntax, :output_limit]},
    {"no return", ~S|local x = 1|, [:no_return]}
  ]

  test "the suite has at least 40 hostile scripts" do
    assert length(@scripts) >= 40
  end

  for {{name, code, expected}, index} <- Enum.with_index(@scripts) do
    @tag hostile: index
    test "hostile script: #{name}" do
      check(unquote(name), unquote(code), unquote(expected))
    end
  end

  test "the VM is healthy after every hostile script ran, eight at a time" do
    processes_before = length(Process.list())

    @scripts
    |> Task.async_stream(
      fn {name, code, expected} ->
        # Eight CPU-bound runs share two cores here, so a runaway loop may
        # reach its wall-time limit before its instruction, memory or
        # output limit.
        limits = [:instruction_limit, :memory_limit, :output_limit]

        expected =
          if Enum.any?(limits, &(&1 in expected)), do: [:timeout | expected], else: expected

        check(name, code, expected)
      end,
      max_concurrency: 8,
      timeout: 10_000
    )
    |> Enum.each(fn result -> assert {:ok, _} = result end)

    assert {:ok, %{"ok" => true, "sum" => 5050}} =
             Lua.eval(~S[local s = 0 for i = 1, 100 do s = s + i end return {ok = true, sum = s}])

    # Every run has released its Lua slot and every runner and callback
    # process is gone (killed callbacks included).
    assert eventually(fn -> match?({0, _}, Native.lua_status()) end)
    assert eventually(fn -> length(Process.list()) <= processes_before + 2 end)
    assert {:ok, %{jobs_in_flight: in_flight}} = Beamlens.Runtime.status()
    assert in_flight < 8
  end

  defp check(name, code, expected) do
    started = System.monotonic_time(:millisecond)
    result = Lua.eval(code, @callbacks, @limits)
    elapsed = System.monotonic_time(:millisecond) - started

    outcome =
      case result do
        {:ok, _} -> :ok
        {:error, %LuaError{kind: kind}} -> kind
      end

    assert outcome in expected,
           "#{name}: expected #{inspect(expected)}, got #{inspect(result, limit: 8, printable_limit: 300)}"

    assert elapsed < @deadline, "#{name} took #{elapsed} ms"

    with {:error, %LuaError{message: message}} <- result do
      assert is_binary(message) and message != ""
      refute message =~ "#Reference<"
      refute message =~ "stack traceback"
    end
  end
end
