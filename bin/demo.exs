# The BeamLens demo: a small sample application with all seven built-in
# watchers. Faults are injected one after another; every state change and
# alert is printed as it happens.
#
#   bin/demo                 rules-only, or the provider configured by env
#   ANTHROPIC_API_KEY=... bin/demo
#   bin/demo --local-model   a small open model on loopback: three watchers
#                            (beam, ets, logger) and three faults, each given
#                            time for the model's investigation
#
# Run from test/host_app (bin/demo does when PostgreSQL is there), it also
# watches the host app's real database and its crashes: slow queries, a
# saturated pool, failing SQL and payment crashes reported by Tower.

if Code.ensure_loaded?(:telemetry) do
  # The real library (in the host app): `mix run --no-start` did not start it.
  {:ok, _} = Application.ensure_all_started(:telemetry)
else
  # Offline there is no telemetry library; use the test suite's stand-in.
  Code.require_file("../test/support/telemetry.ex", __DIR__)
end

# Only the demo's own output: no console logging (Elixir 1.14 has a console
# backend; 1.15+ a :logger handler).
Logger.remove_backend(:console)
_ = :logger.remove_handler(:default)

defmodule Demo do
  @moduledoc false

  def puts(text), do: IO.puts(line(text))
  def line(text), do: "#{clock()}  #{text}"

  defp clock do
    ms = System.monotonic_time(:millisecond) - :persistent_term.get(:demo_t0)
    :io_lib.format("~6.1f s", [ms / 1000]) |> IO.chardata_to_string()
  end

  def handle([:beamlens, :watcher, :state_changed], _m, meta, _) do
    puts("  state  #{pad(meta.watcher)} #{meta.from} -> #{meta.to}")
  end

  # Each alert is printed with one write, so alerts fired at the same time
  # by different watchers do not interleave.
  def handle([:beamlens, :watcher, :alert_fired], _m, %{alert: a}, _) do
    entities = Enum.map_join(Enum.take(a.entities, 4), ", ", fn {t, id} -> "#{t}=#{id}" end)

    lines =
      [
        line("  ALERT  #{pad(a.watcher)} [#{a.severity}] #{a.anomaly_type} (#{a.source})"),
        "           summary:     #{a.summary}",
        "           observation: #{String.slice(a.observation, 0, 300)}",
        a.hypothesis && "           hypothesis:  #{a.hypothesis}",
        entities != "" && "           entities:    #{entities}",
        slowest_sql(a) && "           slowest SQL: #{slowest_sql(a)}"
      ]

    IO.puts(Enum.filter(lines, & &1) |> Enum.join("\n"))
  end

  def handle([:beamlens, :coordinator, event], _m, %{insight: i}, _)
      when event in [:insight_produced, :insight_updated] do
    verb = if event == :insight_produced, do: "INSIGHT", else: "insight+"
    watchers = Enum.join(i.watchers, ", ")

    [
      line("  #{verb} [#{i.correlation_type}, #{i.alert_count} alerts from #{watchers}] (#{i.summary_source})"),
      "           summary:     #{i.summary}",
      i.root_cause_hypothesis && "           root cause:  #{String.slice(i.root_cause_hypothesis, 0, 400)}"
    ]
    |> Enum.filter(& &1)
    |> Enum.join("\n")
    |> IO.puts()
  end

  def handle([:beamlens, :watcher, :alert_folded], m, %{alert: a}, _) do
    puts("  repeat #{pad(a.watcher)} #{a.anomaly_type} folded into the open alert (#{m.occurrences} occurrences)")
  end

  def handle([:beamlens, :watcher, :tool_call], _m, meta, _) do
    args =
      case meta.arguments do
        %{"code" => code} -> "\n" <> (code |> String.split("\n") |> Enum.map_join("\n", &("             | " <> &1)))
        other -> " " <> inspect(other, limit: 6, printable_limit: 120)
      end

    puts("  model  #{pad(meta.watcher)} #{meta.tool}#{args}")
    result = meta.result |> String.replace(~r/\s+/, " ") |> String.slice(0, 160)
    IO.puts("           -> #{if meta.error?, do: "error: ", else: ""}#{result}")
  end

  def handle([:beamlens, :llm, :request, :stop], m, %{caller: {:watcher, name}}, _) do
    ms = System.convert_time_unit(m.duration, :native, :millisecond)
    puts("  turn   #{pad(name)} model answered in #{ms} ms (#{m.input_tokens} tokens in, #{m.output_tokens} out)")
  end

  def handle([:beamlens, :watcher, :check], m, meta, _) do
    puts("  check  #{pad(meta.watcher)} #{meta.outcome} after #{m.iterations} model turns, #{m.tokens} tokens, #{m.duration} ms")
  end

  def handle(_event, _m, _meta, _), do: :ok

  # In the host app, the normalised SQL of the slowest query group.
  defp slowest_sql(%{watcher: :ecto, anomaly_type: "slow_queries"}) do
    case apply(Module.concat(HostApp, EctoDomain), :snapshot, []).slowest do
      [%{sql: sql} | _] -> sql
      _ -> nil
    end
  rescue
    _ -> nil
  end

  defp slowest_sql(_alert), do: nil

  defp pad(name), do: String.pad_trailing(to_string(name), 7)

  def parent, do: if(Code.ensure_loaded?(HostApp.Boot), do: HostApp.Supervisor, else: Demo.Sup)
end

defmodule Demo.SampleApp do
  @moduledoc false
  # A tiny app to break: a cache, a pool of workers, a flaky supervisor. It
  # is a real OTP application (:demo_app), as a user's app is: the :sup
  # watcher follows the supervision trees of applications.
  use Application

  def start do
    spec = [description: ~c"BeamLens demo app", vsn: ~c"0.1.0", modules: [], registered: [],
            applications: [:kernel, :stdlib], mod: {__MODULE__, []}]

    :ok = :application.load({:application, :demo_app, spec})
    {:ok, _} = Application.ensure_all_started(:demo_app)
  end

  @impl true
  def start(_type, _args) do
    children = [
      %{id: :cache, start: {Agent, :start_link, [fn -> :ets.new(:demo_cache, [:public, :named_table]) end, [name: Demo.Cache]]}},
      {DynamicSupervisor, name: Demo.Workers, strategy: :one_for_one, max_children: 100_000},
      {Task.Supervisor, name: Demo.Tasks}
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: Demo.Sup)
  end
end

faults = [
  {:ets, "ETS cache growth: 400k entries into :demo_cache",
   fn ->
     for i <- 1..400_000, do: :ets.insert(:demo_cache, {i, "user-#{i}", %{cart: Enum.to_list(1..5)}})
   end, fn -> :ets.delete_all_objects(:demo_cache) end},
  {:beam, "Process leak: 8,000 workers that never exit",
   fn ->
     for _ <- 1..8_000 do
       DynamicSupervisor.start_child(Demo.Workers, {Task, fn -> Process.sleep(:infinity) end})
     end
   end,
   fn ->
     for {_, pid, _, _} <- DynamicSupervisor.which_children(Demo.Workers), do: DynamicSupervisor.terminate_child(Demo.Workers, pid)
   end},
  {:beam, "Mailbox build-up: a consumer that stopped receiving gets 50k messages",
   fn ->
     pid = spawn(fn -> Process.sleep(:infinity) end)
     Process.register(pid, Demo.StuckConsumer)
     for i <- 1..50_000, do: send(pid, {:event, i})
   end, fn -> Process.exit(Process.whereis(Demo.StuckConsumer), :kill) end},
  {:logger, "Error-log burst: the payment gateway starts failing",
   fn ->
     require Logger
     for i <- 1..150 do
       Logger.error("payment gateway: connection refused (order #{i})")
       Process.sleep(10)
     end
   end, fn -> :ok end},
  {:sup, "Restart storm: a child that crashes at start-up",
   fn ->
     child = %{id: :flaky, start: {Task, :start_link, [fn -> Process.sleep(20); exit(:database_unreachable) end]}, restart: :permanent}
     opts = [strategy: :one_for_one, max_restarts: 10_000, max_seconds: 1, name: Demo.FlakySup]
     flaky = %{id: Demo.FlakySup, type: :supervisor, start: {Supervisor, :start_link, [[child], opts]}}
     # In the host app, a supervisor of the application's own tree.
     {:ok, _} = Supervisor.start_child(Demo.parent(), flaky)
     Process.sleep(2_000)
   end,
   fn ->
     Supervisor.terminate_child(Demo.parent(), Demo.FlakySup)
     Supervisor.delete_child(Demo.parent(), Demo.FlakySup)
   end},
  {:ports, "Socket leak: 400 UDP sockets opened and never closed",
   fn ->
     pid = spawn(fn -> for(_ <- 1..400, do: :gen_udp.open(0)); Process.sleep(:infinity) end)
     Process.register(pid, Demo.SocketLeaker)
   end, fn -> Process.exit(Process.whereis(Demo.SocketLeaker), :kill) end},
  {:gc, "GC pressure: a process churning short-lived data",
   fn ->
     pid = spawn(fn -> Stream.repeatedly(fn -> Enum.map(1..5_000, &{&1, &1}) end) |> Stream.run() end)
     Process.register(pid, Demo.Churner)
   end, fn -> Process.exit(Process.whereis(Demo.Churner), :kill) end}
]

host_app? = Code.ensure_loaded?(HostApp.Boot)

# The host app's faults: real queries on a real PostgreSQL, real crashes.
# `loops` runs a function again and again in n tasks of the app.
loops = fn n, fun ->
  for _ <- 1..n do
    {:ok, pid} =
      Task.Supervisor.start_child(HostApp.Tasks, fn ->
        Stream.repeatedly(fn ->
          try do
            fun.()
          rescue
            _ -> :error
          end
        end)
        |> Stream.run()
      end)

    pid
  end
end

stop_loops = fn ->
  :persistent_term.get(:demo_loops, []) |> Enum.each(&Task.Supervisor.terminate_child(HostApp.Tasks, &1))
end
run_loops = fn n, fun -> :persistent_term.put(:demo_loops, loops.(n, fun)) end

database_faults =
  if host_app? do
    [
      {:ecto, "Slow queries: a report runs pg_sleep(0.4) on PostgreSQL, 3 callers at a time",
       fn -> run_loops.(3, fn -> HostApp.Orders.slow_report("acme", 0.4) end) end, stop_loops},
      {:ecto, "Pool saturation: 15 callers share a pool of 5 connections, each holding one 150 ms",
       fn -> run_loops.(15, fn -> HostApp.Orders.slow_report("acme", 0.15) end) end, stop_loops},
      {:ecto, "Failing SQL: a query on a table that a migration forgot",
       fn ->
         run_loops.(2, fn ->
           HostApp.Orders.broken_lookup(1)
           Process.sleep(5)
         end)
       end, stop_loops},
      {:exception, "Payment crashes: 40 declined charges crash their tasks (Tower reports them)",
       fn ->
         for id <- 1..40 do
           HostApp.Orders.charge_async(id)
           Process.sleep(20)
         end
       end, fn -> :ok end}
    ]
  else
    []
  end

# The database's first: the :exception watcher's cooldown would hide the
# Tower crashes behind the restart storm's.
faults = database_faults ++ faults

:persistent_term.put(:demo_t0, System.monotonic_time(:millisecond))
{:ok, _} = Demo.SampleApp.start()

events = [
  [:beamlens, :watcher, :state_changed],
  [:beamlens, :watcher, :alert_fired],
  [:beamlens, :watcher, :alert_folded],
  [:beamlens, :watcher, :tool_call],
  [:beamlens, :watcher, :check],
  [:beamlens, :llm, :request, :stop],
  [:beamlens, :coordinator, :insight_produced],
  [:beamlens, :coordinator, :insight_updated]
]

:ok = :telemetry.attach_many("beamlens-demo", events, &Demo.handle/4, nil)

local_url = System.get_env("BEAMLENS_DEMO_MODEL_URL")
local? = local_url not in [nil, ""]

provider =
  cond do
    # A turn of a 0.5B model on two cores takes seconds to a minute.
    local? -> [provider: :openai_compatible, model: "qwen2.5-coder-0.5b", base_url: local_url, timeout: 240_000]
    System.get_env("ANTHROPIC_API_KEY") not in [nil, ""] -> [provider: :anthropic]
    System.get_env("OPENAI_API_KEY") not in [nil, ""] -> [provider: :openai, model: "gpt-4o-mini"]
    System.get_env("GOOGLE_API_KEY") not in [nil, ""] -> [provider: :gemini, model: "gemini-2.5-flash"]
    true -> :none
  end

describe =
  case provider do
    :none -> "none: rules-only mode (set ANTHROPIC_API_KEY, or use --local-model, to let a model investigate)"
    _ when local? -> "Qwen2.5-Coder-0.5B on #{local_url} (local, slow: each model turn takes seconds)"
    opts -> "#{opts[:provider]} #{opts[:model] || "(default model)"}, key from the environment"
  end

interval = if local?, do: 1_000, else: 500
watchers = if local?, do: [:beam, :ets, :logger], else: [:beam, :ets, :gc, :logger, :ports, :sup, :system]
ecto = [name: :ecto, domain_module: Module.concat(HostApp, EctoDomain)]
watchers = if host_app? and not local?, do: watchers ++ [:exception, ecto], else: watchers
names = Enum.map(watchers, fn w -> if is_list(w), do: w[:name], else: w end)
faults = if local?, do: Enum.filter(faults, fn {w, title, _, _} -> w in names and not (title =~ "Mailbox") end), else: faults

IO.puts("""
BeamLens #{Beamlens.version()} demo
  model:    #{describe}
  watchers: #{Enum.join(names, ", ")} (a snapshot every #{interval} ms, 8 to learn baselines)
  app:      #{if host_app?, do: "the host app (test/host_app): Ecto on a real PostgreSQL, Tower, ecto_psql_extras", else: "a sample app in this VM (bin/demo --vm-only, or no PostgreSQL / Elixir 1.16+)"}
""")

database =
  if host_app? do
    # The app's own tree: repo, the Ecto domain's registry and telemetry
    # store (a 5 s window here, so faults show and heal quickly).
    {:ok, url} = HostApp.Boot.start(false, window_ms: 5_000, slots: 5)
    # Kinds of exception first seen 5 s after start count as new.
    {:ok, _} = Beamlens.Domain.Exception.ExceptionStore.start_link(new_group_grace_ms: 5_000)
    order = HostApp.Orders.place!("acme", 4200)
    # The app's usual traffic: quick lookups.
    loops.(2, fn ->
      HostApp.Orders.find(order.id)
      Process.sleep(5)
    end)

    Beamlens.Redactor.redact(url)
  end

{:ok, _} =
  Beamlens.start_link(
    watchers: watchers,
    interval: interval,
    warmup: 8,
    # Baselines also need 60 s by default; the demo's healthy phase is 6 s.
    gate: [warmup_ms: 4_000],
    provider: provider,
    # A local model costs nothing per token; its context is 8,192 tokens.
    token_budget: if(local?, do: :infinity, else: 250_000),
    compaction_max_tokens: if(local?, do: 5_000, else: 50_000),
    # Faults follow each other every 8 s here; a short window keeps them apart.
    coordinator: [window_ms: 4_000]
  )

if database, do: Demo.puts("database: #{database} (password redacted)")

# The host app's endpoint serves LiveDashboard with BeamLens's page.
if host_app? do
  {:ok, {ip, port}} = apply(Module.concat(HostAppWeb, Endpoint), :server_info, [:http])
  Demo.puts("dashboard: http://#{:inet.ntoa(ip)}:#{port}/dashboard/beamlens (while the demo runs)")
end

Demo.puts("learning baselines of a healthy app...")
Process.sleep(6_000)

# With a local model, a fault stays until its watcher's model check is over
# (at most 3 minutes; 20 s if none starts), so the investigation sees it.
await_check = fn watcher ->
  started = System.monotonic_time(:millisecond)
  deadline = started + 180_000

  Stream.repeatedly(fn ->
    Process.sleep(500)
    Enum.find(Beamlens.watchers(), &(&1.name == watcher))
  end)
  |> Enum.reduce_while(:waiting, fn info, phase ->
    cond do
      System.monotonic_time(:millisecond) > deadline -> {:halt, :timeout}
      info.checking? -> {:cont, :checking}
      phase == :checking -> {:halt, :done}
      System.monotonic_time(:millisecond) - started > 20_000 -> {:halt, :no_check}
      true -> {:cont, phase}
    end
  end)
end

# Rules-only, a fault stays until its watcher alerts (at most 30 s), as a
# real one would: leaks are judged on their floor over a window of several
# seconds, so a fault healed after a moment is rightly not a leak.
await_alert = fn watcher, since ->
  Enum.find_value(1..120, :timeout, fn _ ->
    Process.sleep(250)
    Beamlens.alerts(watcher: watcher, since: since) != [] and :alerted
  end)
end

for {watcher, title, inject, heal} <- faults do
  IO.puts("")
  Demo.puts("FAULT  #{title}")
  since = DateTime.utc_now()
  inject.()

  case local? || await_alert.(watcher, since) do
    true -> await_check.(watcher)
    :alerted -> Process.sleep(1_000)
    :timeout -> Demo.puts("(no alert from #{watcher} within 30 s)")
  end

  heal.()
  Demo.puts("healed")
  Process.sleep(3_000)
end

IO.puts("")
Demo.puts("final states:")

for w <- Beamlens.watchers() do
  IO.puts("           #{String.pad_trailing(to_string(w.name), 7)} #{w.state}  (#{w.alerts_fired} alerts, #{w.ticks} snapshots, #{w.skipped_ticks} skipped)")
end

insights = Beamlens.Coordinator.insights()
IO.puts("           insights: #{length(insights)} (#{insights |> Enum.frequencies_by(& &1.correlation_type) |> Enum.map_join(", ", fn {t, n} -> "#{n} #{t}" end)})")

if provider != :none do
  usage = Beamlens.LLM.usage()
  IO.puts("           model usage: #{inspect(usage)}")
end

# Operating BeamLens (issue 15): what an engineer sees from a remote console.
# Memory grows again, and stays, so there is something to ask about.
IO.puts("")
Demo.puts("FAULT  Binary memory growth: a process holds 200 MB of binaries, left in place")
pid = spawn(fn -> bins = for(_ <- 1..200, do: :binary.copy(<<1>>, 1_000_000)); receive(do: (:never -> bins)) end)
Process.register(pid, Demo.BinaryHoarder)

# Until :beam sees it (at most 30 s): growth is judged over a window.
Enum.find_value(1..120, fn _ ->
  Process.sleep(250)
  Enum.find(Beamlens.status().watchers, &(&1.name == :beam and &1.state in [:warning, :critical]))
end)

IO.puts("")
IO.puts("iex> Beamlens.report()")
Beamlens.report()
IO.puts("")
IO.puts(~s|iex> {:ok, report} = Beamlens.investigate("why is memory growing?"); IO.puts(Beamlens.Report.to_text(report))|)

case Beamlens.investigate("why is memory growing?", timeout: 180_000) do
  {:ok, report} -> IO.puts(Beamlens.Report.to_text(report))
  {:error, error} -> IO.puts("investigate/2 failed: #{Exception.message(error)}")
end
