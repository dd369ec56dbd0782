defmodule Beamlens.RealModel do
  @moduledoc """
  Fault scenarios run against a real model on loopback, shared by the
  opt-in `:real_model` test group (`test/beamlens/real_model_test.exs`) and
  the eval report (`bench/real_model_eval.exs`).

  A scenario starts BeamLens with one watcher whose model is the one at
  `BEAMLENS_REAL_MODEL_URL` (an OpenAI-compatible server such as
  llama.cpp's `llama-server`, or Ollama with
  `BEAMLENS_REAL_MODEL_PROVIDER=ollama`), lets the gate learn a baseline,
  injects a fault, and records everything the watcher emits until the
  first check (model wake-up) ends. `healthy/3` runs the same watcher for
  the same time without a fault, with a heartbeat that makes the model
  check in, so it gets its chance to raise a false alarm.

  Nothing here assumes what the model will say: results hold the raw
  telemetry (checks, tool calls, alerts) and `facts/1` derives what the
  test asserts and the eval prints.
  """

  alias Beamlens.{Alert, LLM, Watcher}

  @interval 1_000
  @warmup 5
  @max_iterations 6

  @events [
    [:beamlens, :watcher, :alert_fired],
    [:beamlens, :watcher, :check],
    [:beamlens, :watcher, :tool_call],
    [:beamlens, :llm, :request, :stop],
    [:beamlens, :llm, :request, :exception]
  ]

  @typedoc "A fault to inject and what a right diagnosis names."
  @type scenario :: %{
          name: String.t(),
          watcher: atom(),
          inject: (() -> term()),
          heal: (term() -> term()),
          expected_types: [String.t()],
          cause_words: [String.t()]
        }

  @doc "Milliseconds a run spends learning its baseline before the fault."
  @spec warmup_ms() :: pos_integer()
  def warmup_ms, do: (@warmup + 1) * @interval

  @doc "The watcher options of every scenario run."
  @spec watcher_options() :: keyword()
  def watcher_options do
    [
      interval: @interval,
      warmup: @warmup,
      max_iterations: @max_iterations,
      heartbeat: :infinity,
      # llama-server runs with an 8,192-token context.
      compaction_max_tokens: 5_000,
      compaction_keep_last: 4
    ]
  end

  @doc """
  Provider options for the model under test, from the environment:
  `BEAMLENS_REAL_MODEL_URL` (required), `BEAMLENS_REAL_MODEL_PROVIDER`
  (`openai_compatible`, the default, or `ollama`) and
  `BEAMLENS_REAL_MODEL_NAME` (default `"local"`; llama-server ignores it).
  """
  @spec provider() :: keyword()
  def provider do
    url = System.fetch_env!("BEAMLENS_REAL_MODEL_URL")

    provider =
      case System.get_env("BEAMLENS_REAL_MODEL_PROVIDER", "openai_compatible") do
        "ollama" -> :ollama
        _ -> :openai_compatible
      end

    # A turn of a small model on two shared cores takes up to a minute.
    [
      provider: provider,
      model: System.get_env("BEAMLENS_REAL_MODEL_NAME", "local"),
      base_url: url,
      timeout: 240_000,
      max_retries: 1
    ]
  end

  @doc "The three fault scenarios: ETS growth, a process leak, an error-log burst."
  @spec scenarios() :: [scenario()]
  def scenarios do
    [
      %{
        name: "ets_growth",
        watcher: :ets,
        inject: &grow_ets/0,
        heal: &stop_holder/1,
        expected_types: ["ets_memory_growth", "ets_table_growth"],
        cause_words: ["user_sessions"]
      },
      %{
        name: "process_leak",
        watcher: :beam,
        inject: &leak_processes/0,
        heal: &stop_holder/1,
        expected_types: ["process_leak", "process_count_high", "process_memory_growth"],
        cause_words: ["sleep"]
      },
      %{
        name: "error_log_burst",
        watcher: :logger,
        inject: &log_errors/0,
        heal: fn _ -> :ok end,
        expected_types: ["error_log_burst", "connection_errors"],
        cause_words: ["payment", "connection refused"]
      }
    ]
  end

  @doc """
  Runs `scenario` with its fault. Returns the recorded run: `:checks`,
  `:tool_calls`, `:alerts` and `:llm` (telemetry of this watcher, oldest
  first), `:alive?` and `:restarted?` (of the watcher at the end),
  `:usage_tokens` (tokens the LLM client counted for it) and `:wall_ms`.

  Options: `:check_timeout` (ms to wait for the first check to end,
  default 480,000).
  """
  @spec fault(scenario(), keyword()) :: map()
  def fault(scenario, opts \\ []) do
    run(scenario, watcher_options(), fn _instance ->
      holder = scenario.inject.()
      wait_for_gate_check(Keyword.get(opts, :check_timeout, 480_000))
      holder
    end)
  end

  @doc """
  Runs `scenario`'s watcher without a fault for `duration_ms` after its
  warm-up, with a heartbeat so the model checks in; a check still running
  at the end is awaited (up to `:check_timeout`) so its alerts count.
  """
  @spec healthy(scenario(), pos_integer(), keyword()) :: map()
  def healthy(scenario, duration_ms, opts \\ []) do
    options = Keyword.put(watcher_options(), :heartbeat, (@warmup + 2) * @interval)
    scenario = %{scenario | heal: fn _ -> :ok end}

    run(scenario, options, fn instance ->
      Process.sleep(duration_ms)
      deadline = System.monotonic_time(:millisecond) + Keyword.get(opts, :check_timeout, 480_000)
      await_idle(instance, scenario.watcher, deadline)
    end)
  end

  defp run(scenario, watcher_options, body) do
    name = scenario.watcher
    instance = Module.concat(__MODULE__, "I#{System.unique_integer([:positive])}")
    handler = "real-model-#{inspect(instance)}"
    :ok = :telemetry.attach_many(handler, @events, &__MODULE__.forward/4, {self(), name})
    usage_before = LLM.usage({:watcher, name}).total_tokens
    t0 = System.monotonic_time(:millisecond)

    {:ok, sup} =
      Beamlens.start_link(
        name: instance,
        watchers: [Keyword.put(watcher_options, :name, name)],
        provider: provider(),
        token_budget: :infinity,
        coordinator: false
      )

    try do
      pid = Watcher.whereis(instance, name)
      await_ticks(instance, name, @warmup + 1)
      holder = body.(instance)
      # Gate alerts fire before the check event; give stragglers a moment.
      Process.sleep(200)
      scenario.heal.(holder)
      now = Watcher.whereis(instance, name)

      events = drain([])

      %{
        scenario: scenario.name,
        watcher: name,
        alive?: now != nil and Process.alive?(now),
        restarted?: now != pid,
        checks: for({:check, m, meta} <- events, do: Map.merge(meta, m)),
        tool_calls: for({:tool_call, _, meta} <- events, do: meta),
        alerts: for({:alert_fired, _, %{alert: alert}} <- events, do: alert),
        llm: for({:llm, kind, m, meta} <- events, do: {kind, m, meta}),
        usage_tokens: LLM.usage({:watcher, name}).total_tokens - usage_before,
        wall_ms: System.monotonic_time(:millisecond) - t0
      }
    after
      :telemetry.detach(handler)
      if Process.alive?(sup), do: Supervisor.stop(sup)
      LLM.set_budget(:infinity)
    end
  end

  @doc false
  def forward(
        [:beamlens, :llm, :request, kind],
        m,
        %{caller: {:watcher, name}} = meta,
        {pid, name}
      ),
      do: send(pid, {__MODULE__, {:llm, kind, m, meta}})

  def forward([:beamlens, :watcher, event], m, %{watcher: name} = meta, {pid, name}),
    do: send(pid, {__MODULE__, {event, m, meta}})

  def forward(_event, _m, _meta, _target), do: :ok

  # Waits for the end of the first check woken by gate findings. The other
  # events stay in the mailbox for drain/1 (and this one is put back).
  defp wait_for_gate_check(timeout) do
    receive do
      {__MODULE__, {:check, _m, %{reason: "gate findings"}}} = message ->
        send(self(), message)
        :ok
    after
      timeout -> :timeout
    end
  end

  # Waits until the watcher is not in a check (or the deadline passed).
  defp await_idle(instance, name, deadline) do
    checking? = Watcher.info(Watcher.whereis(instance, name)).checking?

    if checking? and System.monotonic_time(:millisecond) < deadline do
      Process.sleep(200)
      await_idle(instance, name, deadline)
    else
      nil
    end
  end

  defp drain(acc) do
    receive do
      {__MODULE__, event} -> drain([event | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  defp await_ticks(instance, name, n) do
    info = Watcher.info(Watcher.whereis(instance, name))

    if info.ticks >= n do
      :ok
    else
      Process.sleep(100)
      await_ticks(instance, name, n)
    end
  end

  @doc """
  What a run shows, whatever the model said:

    * `:fault_alerts` - alerts of the scenario's expected types, and
      `:alert_sources` - their sources (`:llm`, `:gate`).
    * `:lua_valid?` / `:alert_valid?` - the model itself called
      `execute_lua` / `fire_alert` with arguments the watcher accepted (a
      Lua script that then failed does not count).
    * `:alert_forced?` - its valid `fire_alert` only came after the watcher
      asked for the report (with a forced tool choice).
    * `:model_calls`, `:valid_calls`, `:corrections`, `:tokens`,
      `:checks`, `:turns`, `:ms_per_check`, `:max_turns`.
    * `:model_alerts` - the model's alerts of an expected type;
      `:right_type?` - there is one; `:names_cause?` - its text also names
      the culprit (the `user_sessions` table, the sleeping workers, the
      payment gateway).
  """
  @spec facts(map(), scenario()) :: map()
  def facts(run, scenario) do
    calls = run.tool_calls
    valid = Enum.reject(calls, & &1.error?)
    fault_alerts = Enum.filter(run.alerts, &(&1.anomaly_type in scenario.expected_types))
    model_alerts = Enum.filter(fault_alerts, &(&1.source == :llm))

    own_alerts =
      for {call, i} <- Enum.with_index(calls),
          call.tool == "fire_alert" and not call.error? and not asked_before?(calls, i),
          do: call

    checks = run.checks

    %{
      fault_alerts: fault_alerts,
      alert_sources: fault_alerts |> Enum.map(& &1.source) |> Enum.uniq(),
      lua_valid?: Enum.any?(valid, &(&1.tool == "execute_lua")),
      alert_valid?: Enum.any?(valid, &(&1.tool == "fire_alert")),
      alert_forced?: Enum.any?(valid, &(&1.tool == "fire_alert")) and own_alerts == [],
      model_calls: length(calls),
      valid_calls: length(valid),
      corrections: Enum.sum(Enum.map(checks, & &1.corrections)),
      tokens: Enum.sum(Enum.map(checks, & &1.tokens)),
      checks: length(checks),
      turns: Enum.sum(Enum.map(checks, & &1.iterations)),
      max_turns: Enum.max(Enum.map(checks, & &1.iterations), fn -> 0 end),
      ms_per_check:
        if(checks == [],
          do: 0,
          else: div(Enum.sum(Enum.map(checks, & &1.duration)), length(checks))
        ),
      outcomes: Enum.map(checks, & &1.outcome),
      model_alerts: model_alerts,
      right_type?: model_alerts != [],
      names_cause?: Enum.any?(model_alerts, &names_cause?(&1, scenario.cause_words))
    }
  end

  # Whether the call at `index` answered the watcher's request for a report.
  defp asked_before?(_calls, 0), do: false

  defp asked_before?(calls, index),
    do: String.starts_with?(Enum.at(calls, index - 1).result, "Not finished: the gate found")

  defp names_cause?(%Alert{} = alert, words) do
    text = String.downcase("#{alert.summary} #{alert.observation} #{alert.hypothesis}")
    Enum.any?(words, &String.contains?(text, &1))
  end

  ## Faults

  # A cache that never evicts: 300k sessions in a named table (~45 MiB).
  defp grow_ets do
    holder(fn ->
      table = :ets.new(:user_sessions, [:public, :named_table])
      for i <- 1..300_000, do: :ets.insert(table, {i, "session-#{i}", %{user: i}})
    end)
  end

  # 8,000 workers that never exit.
  defp leak_processes do
    holder(fn ->
      for _ <- 1..8_000, do: spawn_link(fn -> Process.sleep(:infinity) end)
    end)
  end

  # A payment gateway refusing connections: 150 errors at once.
  defp log_errors do
    require Logger
    for i <- 1..150, do: Logger.error("payment gateway: connection refused (order #{i})")
    nil
  end

  # A process that sets up the fault and keeps it alive until healed.
  defp holder(setup) do
    parent = self()

    pid =
      spawn(fn ->
        setup.()
        send(parent, {:fault_ready, self()})
        Process.sleep(:infinity)
      end)

    receive do
      {:fault_ready, ^pid} -> pid
    after
      60_000 -> raise "the fault did not set up within 60 s"
    end
  end

  defp stop_holder(pid) when is_pid(pid) do
    ref = Process.monitor(pid)
    Process.exit(pid, :kill)

    receive do
      {:DOWN, ^ref, :process, _, _} -> :ok
    end
  end
end
