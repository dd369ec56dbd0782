defmodule Beamlens.Lua do
  @limits [
    timeout: [
      type: {:integer, 1, 60_000},
      default: 2_000,
      doc: "Wall time of the whole run in milliseconds, callbacks included."
    ],
    max_instructions: [
      type: {:integer, 1, 10_000_000_000},
      default: 10_000_000,
      doc:
        "Interrupt checks the script may pass: Luau checks at every loop iteration, " <>
          "function call and pattern-matching step (10 million is roughly 50-100 ms of a tight loop)."
    ],
    max_memory: [
      type: {:integer, 1, 256 * 1024 * 1024},
      default: 8 * 1024 * 1024,
      doc: "Bytes the script may allocate."
    ],
    max_output: [
      type: {:integer, 1, 16 * 1024 * 1024},
      default: 64 * 1024,
      doc: "Bytes of the returned value (as JSON), and separately of `print` output."
    ],
    max_callbacks: [
      type: {:integer, 1, 100_000},
      default: 200,
      doc: "Callback calls per run."
    ],
    callback_timeout: [
      type: {:integer, 1, 60_000},
      default: 1_000,
      doc: "Wall time of one callback call in milliseconds."
    ]
  ]

  @options @limits ++
             [
               result: [
                 type: {:in, [:value, :full]},
                 default: :value,
                 expected: ":value or :full",
                 doc: "`:value` or `:full`, see \"Output\"."
               ],
               telemetry_metadata: [
                 type: :map,
                 default: %{},
                 doc:
                   "A map merged into the metadata of the `[:beamlens, :lua, :execute, ...]` " <>
                     "events (for example `%{watcher: :beam}`)."
               ]
             ]

  @native_keys Keyword.keys(@limits)
  @native_keys Keyword.keys(@options)

  @moduledoc """
  Runs untrusted, read-only Lua investigation scripts in a sandbox, off the
  Erlang schedulers, with hard limits and callbacks into your Elixir code.

      callbacks = %{
        "beam.top_processes" => &MyDomain.top_processes/2,
        "ets.tables" => fn -> :ets.all() |> Enum.take(20) end
      }

      Beamlens.Lua.eval(~S'''
        local top = beam.top_processes(10, "memory")
        return {count = #top, first = top[1]}
      ''', callbacks)
      #=> {:ok, %{"count" => 10, "first" => %{...}}}

  `eval/3` waits for the result. `eval_async/3` returns `{:ok, ref}` at once
  and the caller later receives exactly one `{ref, {:ok, value} |
  {:error, %Beamlens.LuaError{}}}` message: a GenServer stays responsive
  while the script runs and never runs a callback itself.

  ## The sandbox

  Scripts run in [Luau](https://luau.org) (a Lua 5.1 dialect). `eval/3`
  runs a small script in the calling process itself (up to its first
  callback call, see below), in slices of at most about 0.2 ms of
  interpreter time, yielding its scheduler between them (`eval_async/3`
  does the same in a runner process of the run);
  what cannot be cut into such slices (a large input to a library function,
  a loop inside a metamethod or a `table.sort` comparator, a callback
  called from one of those) moves the run to the BeamLens native runtime's
  blocking thread pool, where the script runs again from the start within
  what is left of its `:timeout`. Callbacks may then be called again, which
  is one more reason they should be read-only. Each run gets its own global
  table, callbacks, limits and memory budget in a sealed interpreter state
  reused from a small pool (a state whose run broke a limit is discarded);
  nothing a script stores survives its run.
  Scripts can use the computing parts of the standard library (`string`,
  `table`, `math`, `utf8`, `bit32`, `buffer`, `coroutine`, `pcall`, ...),
  `os.clock` and `os.time`. They cannot reach `io`, the rest of `os`,
  `require`, `loadstring`, `getfenv`/`setfenv`, `debug`, garbage collector
  control or bytecode loading, and every shared table (globals, libraries,
  the string metatable) is read-only. At most 8 runs execute on the thread
  pool at once; more get a `:busy` error (so does `eval/3` while all 8 are
  taken).

  ## Callbacks

  `callbacks` maps dotted names to functions. `"beam.top_processes"` is
  called from Lua as `beam.top_processes(10, "memory")`, which calls the
  function with `(10, "memory")`. Missing arguments are `nil`, as in Lua;
  more arguments than the function's arity is an error. Names must be
  dotted Lua identifiers that do not shadow a standard global (`string`,
  `print`, ...).

  Calls never run in the caller. A script run in slices moves at its
  first callback call into a worker process of the run, which runs that
  call, the rest of the script and its later calls while the caller (or
  the runner of `eval_async/3`) waits: a call then costs about as much as
  a function call from luerl. On the thread pool, calls run in a helper
  process of the run. Each call has `:callback_timeout`. A callback that
  raises, exits, or times out makes the Lua call fail with a readable error
  (a process that died or timed out is killed and replaced); the script
  may catch it with `pcall`, otherwise the run ends with `:callback_error`
  or `:callback_timeout`.
  Callbacks should be read-only and bounded (top-N, sampled).

  ## Values

  Arguments and return values of callbacks, and the script's result,
  convert like JSON: `nil`, booleans, numbers, strings (binaries), lists and
  maps. Atoms become strings (`:foo` -> `"foo"`, `nil`/`true`/`false` stay),
  tuples become lists, pids, ports, references and functions become
  readable strings such as `"#PID<0.123.0>"`, map keys become strings. In
  Lua, maps are tables with string keys and lists are sequences (1-based).
  Back in Elixir, a table with keys exactly `1..n` is a list, an empty table
  is `[]`, any other table a map with string keys; integral numbers are
  integers; functions and coroutines become strings like `"<function>"`.
  A script that returns several values returns a list of them.

  ## Output

  `print` is captured (bounded by `:max_output`). With the default
  `result: :value`, a successful run returns `{:ok, value}`; with
  `result: :full` it returns `{:ok, %Beamlens.Lua.Result{}}`, which also
  holds the printed output and the run's stats. A failed run's printed
  output is in `Beamlens.LuaError`'s `:output` field. A script must
  `return` its result: one that returns nothing fails with `:no_return`
  and a hint, even if it printed.

  ## Options

  #{Beamlens.Schema.docs(@options)}

  Breaking a limit ends the run with the matching `Beamlens.LuaError` kind
  (`:timeout`, `:instruction_limit`, `:memory_limit`, `:output_limit`,
  `:callback_limit`); a script cannot catch it with `pcall`.

  ## Telemetry

  Every run emits `[:beamlens, :lua, :execute, :start]` and
  `[:beamlens, :lua, :execute, :stop]`; see `Beamlens.Telemetry`.
  """

  alias Beamlens.LuaError
  alias Beamlens.Lua.{Inline, Runner}

  @typedoc "Dotted callback names mapped to functions."
  @type callbacks :: %{optional(String.t()) => function()}

  @type option ::
          {:timeout, pos_integer()}
          | {:max_instructions, pos_integer()}
          | {:max_memory, pos_integer()}
          | {:max_output, pos_integer()}
          | {:max_callbacks, pos_integer()}
          | {:callback_timeout, pos_integer()}
          | {:result, :value | :full}
          | {:telemetry_metadata, map()}

  @doc """
  Runs `code` and waits for its result.

  Returns `{:ok, value}` (or `{:ok, %Beamlens.Lua.Result{}}` with
  `result: :full`) or `{:error, %Beamlens.LuaError{}}`. Does not block any
  scheduler: the calling process waits in `receive`.

      iex> Beamlens.Lua.eval("return 1 + 1")
      {:ok, 2}

      iex> {:error, error} = Beamlens.Lua.eval("local x = nil\\nreturn x.count")
      iex> Exception.message(error)
      "line 2: attempt to index nil with 'count'"

      iex> Beamlens.Lua.eval("return double(21)", %{"double" => &(&1 * 2)})
      {:ok, 42}
  """
  @spec eval(String.t(), callbacks(), [option()]) ::
          {:ok, term()} | {:error, LuaError.t()}
  def eval(code, callbacks \\ %{}, opts \\ []) do
    with {:ok, code, callbacks, config} <- validate(code, callbacks, opts) do
      case Inline.run(code, callbacks, config) do
        {:done, result} -> result
        {:thread, config} -> eval_threaded(code, callbacks, config)
      end
    end
  end

  # Errors, refusals included, come back as the runner's reply.
  defp eval_threaded(code, callbacks, config) do
    {:ok, ref, runner} = Runner.start(self(), code, callbacks, config, :thread)
    monitor = Process.monitor(runner)

    receive do
      {^ref, result} ->
        Process.demonitor(monitor, [:flush])
        result

      {:DOWN, ^monitor, :process, _, reason} ->
        # Only possible if someone killed the runner.
        receive do
          {^ref, result} -> result
        after
          0 ->
            {:error,
             %LuaError{
               kind: :internal,
               message: "the Lua runner exited: #{inspect(reason, limit: 10)}"
             }}
        end
    end
  end

  @doc """
  Starts running `code` and returns `{:ok, ref}` at once.

  The calling process later receives exactly one message
  `{ref, {:ok, value} | {:error, %Beamlens.LuaError{}}}`. The run is
  served by a runner process, which steps the script as `eval/3` does;
  callbacks run in separate processes, never in the caller. The run is
  cancelled if the caller exits. Invalid arguments are returned directly;
  every other error, `:busy` included, is the message's result.
  """
  @spec eval_async(String.t(), callbacks(), [option()]) ::
          {:ok, reference()} | {:error, LuaError.t()}
  def eval_async(code, callbacks \\ %{}, opts \\ []) do
    with {:ok, code, callbacks, config} <- validate(code, callbacks, opts),
         {:ok, ref, _runner} <- Runner.start(self(), code, callbacks, config, :inline) do
      {:ok, ref}
    end
  end

  @doc false
  # Like `eval_async/3`, and also returns the process that serves the run,
  # for callers that monitor it (the watcher).
  @spec eval_async_monitored(String.t(), callbacks(), [option()]) ::
          {:ok, reference(), pid()} | {:error, LuaError.t()}
  def eval_async_monitored(code, callbacks, opts) do
    with {:ok, code, callbacks, config} <- validate(code, callbacks, opts) do
      Runner.start(self(), code, callbacks, config, :inline)
    end
  end

  @doc """
  The default value of each limit option.

      iex> Beamlens.Lua.defaults()[:timeout]
      2000
  """
  @spec defaults() :: keyword(pos_integer())
  def defaults, do: Beamlens.Schema.defaults(@limits)

  @doc false
  @spec native_option_keys() :: [atom()]
  def native_option_keys, do: @native_keys

  defp validate(code, callbacks, opts) do
    with :ok <- validate_code(code),
         :ok <- validate_callbacks(callbacks),
         {:ok, config} <- validate_options(opts) do
      {:ok, code, callbacks, config}
    end
  end

  defp validate_code(code) when is_binary(code), do: :ok

  defp validate_code(code) do
    bad_argument("code must be a string of Lua source, got: #{inspect(code, limit: 5)}")
  end

  defp validate_callbacks(callbacks) when is_map(callbacks) do
    Enum.reduce_while(callbacks, :ok, fn
      {name, fun}, :ok when is_binary(name) and is_function(fun) ->
        {:cont, :ok}

      {name, value}, :ok ->
        {:halt,
         bad_argument(
           "callbacks must map dotted names (strings) to functions, got " <>
             "#{inspect(name, limit: 5)} => #{inspect(value, limit: 5)}"
         )}
    end)
  end

  defp validate_callbacks(other) do
    bad_argument(
      "callbacks must be a map of names to functions, got: #{inspect(other, limit: 5)}"
    )
  end

  defp validate_options(opts) do
    case Beamlens.Schema.validate(opts, @options,
           not_keyword: "options must be a keyword list, got: %{value}",
           invalid: "invalid option %{key}: expected %{expected}, got: %{value}"
         ) do
      {:ok, config} -> {:ok, Map.new(config)}
      {:error, error} -> bad_argument(error.message)
    end
  end

  defp bad_argument(message) do
    {:error, %LuaError{kind: :bad_argument, message: message}}
  end
end
