# Signal quality: does BeamLens raise the right alert, once, with the
# culprit, and stay quiet in a busy but healthy application? (issue 12)
#
#   bench/run signal                                   (everything, rules-only)
#   MIX_ENV=test mix run bench/signal_eval.exs         (the same)
#
# Run it in parts with environment variables:
#   PART=workloads | faults        only the healthy workloads / only the faults
#   TICKS=500 | 30000              only one tick scale (default: both)
#   ONLY=ets_leak,busy_app         only these cases
#   DEBUG=1                        print every tick (to find a stuck case)
#
# With a model (BEAMLENS_REAL_MODEL_URL: an OpenAI-compatible server such as
# the local model, `../shared/tools/local-llm start` prints its URL; see
# Beamlens.RealModel for the provider variables), every single fault of a
# built-in watcher also runs once against the model, in real time with the
# real watcher (1 s tick, as bench/real_model_eval.exs), and the table gets
# the model's columns: the model's own alert had an expected type / its own
# text (summary, observation, hypothesis, without the culprit the code
# appends) named the culprit / seconds per model check.
#
# How it runs. Every case gets fresh anomaly gates (shipped defaults:
# warm-up 10 snapshots, 15-minute cooldown) for eight watchers (:beam, :ets,
# :gc, :logger, :ports, :sup, an Ecto repo and :exception; :system is left
# out because it measures the whole shared machine, not this VM). Time is
# virtual: on every tick the workloads and faults do exactly the work of one
# tick (so many inserts, spawns, log lines, queries, crashes per virtual
# second), then the real domains take real snapshots (in parallel, as
# watchers do) and the real gates judge them with the virtual clock. So a
# 30 s tick costs what its work costs, not 30 s. Alerts are delivered as
# the watcher delivers them (one alert per anomaly type and check, a repeat
# within the cooldown folded unless it escalated; the summary names the
# culprit the domain measured) and the real correlation engine relates them
# into insights with the same virtual clock.
#
# Columns, per tick scale:
#   detected   every anomaly type the fault should raise was alerted (for a
#              combination: each part)
#   ticks      ticks from the start of the fault to the first such alert
#              (the last part, for a combination)
#   alerts     alerts fired during the fault: expected (incl. escalations) +
#              others; goal 1 per part
#   culprit    the first expected alert names the culprit (the table, the
#              process or its function, the module, the port owner, the
#              supervisor) in its summary; n/a when nothing names it (atoms)
#   insights   insights produced for a fault whose alerts came from two
#              watchers or more (goal 1)
#   false/h    for a healthy workload: alerts after warm-up, per virtual
#              hour (goal 0), with the alert types in the notes

for {module, file} <- [
      {:telemetry, "test/support/telemetry.ex"},
      {Beamlens.RealModel, "test/support/real_model.ex"}
    ],
    not Code.ensure_loaded?(module) do
  Code.require_file(file)
end

Logger.remove_backend(:console)
Logger.configure(level: :info)

defmodule Bench.Signal.Repo do
  # An Ecto repo stand-in with the shapes the Ecto domain reads (Ecto is not
  # installable here); the query events below are Ecto SQL's real shape.
  def config, do: [otp_app: :bench, telemetry_prefix: [:bench, :repo], pool_size: 10]
  def __adapter__, do: Bench.Signal.Adapter
end

defmodule Bench.Signal.EctoDomain do
  use Beamlens.Domain.Ecto, repo: Bench.Signal.Repo
end

defmodule Bench.Signal.CheckoutError do
  defexception message: "checkout failed"
end

defmodule Bench.Signal.Actor do
  # A registered process that runs functions on request, so that tables,
  # sockets and spawned processes belong to a named owner.
  def start(name) do
    parent = self()

    pid =
      spawn(fn ->
        Process.register(self(), name)
        send(parent, {:started, self()})
        loop(nil)
      end)

    ref = Process.monitor(pid)

    receive do
      {:started, ^pid} ->
        Process.demonitor(ref, [:flush])
        pid

      {:DOWN, ^ref, _, _, reason} ->
        raise "actor #{inspect(name)} did not start: #{inspect(reason)}"
    end
  end

  def run(pid, fun) do
    ref = Process.monitor(pid)
    send(pid, {:run, ref, self(), fun})

    receive do
      {^ref, result} ->
        Process.demonitor(ref, [:flush])
        result

      {:DOWN, ^ref, _, _, reason} ->
        raise "actor #{inspect(pid)} died: #{inspect(reason)}"
    end
  end

  # Kills the actor and waits until it is gone (with its name and tables).
  def stop(pid) do
    ref = Process.monitor(pid)
    Process.exit(pid, :kill)

    receive do
      {:DOWN, ^ref, _, _, _} -> :ok
    end
  end

  defp loop(state) do
    receive do
      {:run, ref, from, fun} ->
        {result, state} = fun.(state)
        send(from, {ref, result})
        loop(state)
    end
  end
end

defmodule Bench.Signal.Worker do
  # Processes of the workloads and faults, each waiting in a function of
  # its own, as an application's processes do.
  def batch_job, do: receive(do: (:stop -> :ok))
  def leak_loop, do: receive(do: (:stop -> :ok))
  def boot_leak_loop, do: receive(do: (:stop -> :ok))
  def slow_consumer, do: receive(do: (:never -> :ok))

  def spin(n \\ 0), do: spin(n + 1)
end

defmodule Bench.Signal.Flaky do
  # A supervised worker that crashes when told to.
  use GenServer
  def start_link(name), do: GenServer.start_link(__MODULE__, nil, name: name)
  @impl true
  def init(nil), do: {:ok, nil}
  @impl true
  def handle_cast(:crash, _state), do: raise("flaky worker lost its connection")
end

defmodule Bench.Signal.Chatter do
  require Logger
  def warn(i), do: Logger.warning("cache miss storm for tenant #{rem(i, 7)}, retrying")
  def error(i), do: Logger.error("webhook delivery #{i} failed with 503, will retry")
end

defmodule Bench.Signal.PaymentClient do
  require Logger
  def fail(i), do: Logger.error("payment gateway returned 502 for order #{i}")
end

defmodule Bench.Signal.Load do
  # Workloads and faults as step functions of virtual time: step(state,
  # from_ms, to_ms) does the work of (from_ms, to_ms].
  alias Bench.Signal.{Actor, Worker}

  # Event times k * period + phase in (from, to].
  def times(from, to, period, phase \\ 0) do
    first = Integer.floor_div(from - phase, period) + 1

    first
    |> Stream.iterate(&(&1 + 1))
    |> Stream.map(&(&1 * period + phase))
    |> Enum.take_while(&(&1 <= to))
  end

  # How many events of a steady rate (per second) fall in (from, to].
  def count(from, to, per_s), do: floor(to * per_s / 1000) - floor(from * per_s / 1000)

  ## Healthy workloads

  def workload(:cache_churn) do
    # A cache filled at 4,000 entries/s and cleared every 20 s.
    %{
      start: fn ->
        owner = Actor.start(Bench.Cache)
        Actor.run(owner, fn _ -> {:ok, :ets.new(:bench_cache, [:named_table, :public])} end)
        %{owner: owner, n: 0}
      end,
      step: fn st, from, to ->
        cuts = times(from, to, 20_000)
        points = [from | cuts] ++ [to]

        points
        |> Enum.chunk_every(2, 1, :discard)
        |> Enum.with_index()
        |> Enum.reduce(st, fn {[a, b], i}, st ->
          if i > 0, do: :ets.delete_all_objects(:bench_cache)
          n = count(a, b, 4_000)
          for j <- 1..n//1, do: :ets.insert(:bench_cache, {st.n + j, "user-#{st.n + j}", st.n})
          %{st | n: st.n + n}
        end)
      end,
      stop: fn st -> Actor.stop(st.owner) end
    }
  end

  def workload(:batch_jobs) do
    # 3,000 short-lived workers every 10 s, each done within 0.2-1.5 s.
    %{
      start: fn -> %{owner: Actor.start(Bench.Batch), live: []} end,
      step: fn st, from, to ->
        batches = times(from, to, 10_000, 9_500)

        st =
          Enum.reduce(batches, st, fn at, st ->
            workers =
              Actor.run(st.owner, fn s ->
                {for(
                   i <- 1..3_000,
                   do: {at + 200 + rem(i * 7919, 1_300), spawn(&Worker.batch_job/0)}
                 ), s}
              end)

            %{st | live: workers ++ st.live}
          end)

        {done, live} = Enum.split_with(st.live, fn {until, _} -> until <= to end)
        Enum.each(done, fn {_, pid} -> send(pid, :stop) end)
        %{st | live: live}
      end,
      stop: fn st ->
        Enum.each(st.live, fn {_, pid} -> send(pid, :stop) end)
        Actor.stop(st.owner)
      end
    }
  end

  def workload(:log_chatter) do
    # Two warnings a second, an error every 15 s, and its exception.
    %{
      start: fn -> %{i: 0} end,
      step: fn st, from, to ->
        n = count(from, to, 2)
        for i <- 1..n//1, do: Bench.Signal.Chatter.warn(st.i + i)

        for at <- times(from, to, 15_000, 2_000) do
          Bench.Signal.Chatter.error(at)
          report_exception(RuntimeError, "webhook delivery failed", Bench.Signal.Chatter)
        end

        %{st | i: st.i + n}
      end,
      stop: fn _ -> :ok end
    }
  end

  def workload(:alloc_churn) do
    # 8 MB of short-lived terms per second (50 tuples of 20,000 words).
    %{
      start: fn -> %{owner: Actor.start(Bench.Alloc)} end,
      step: fn st, from, to ->
        chunks = count(from, to, 50)

        Actor.run(st.owner, fn s ->
          for i <- 1..chunks//1, do: _ = :erlang.make_tuple(20_000, i)
          {:ok, s}
        end)

        st
      end,
      stop: fn st -> Actor.stop(st.owner) end
    }
  end

  def workload(:socket_churn) do
    # 20 UDP sockets opened per second, each closed 2 s later.
    %{
      start: fn -> %{owner: Actor.start(Bench.Conns), open: []} end,
      step: fn st, from, to ->
        opened =
          for at <- times(from, to, 50) do
            {at + 2_000, Actor.run(st.owner, fn s -> {elem(:gen_udp.open(0), 1), s} end)}
          end

        {done, open} = Enum.split_with(st.open ++ opened, fn {until, _} -> until <= to end)
        Enum.each(done, fn {_, socket} -> :gen_udp.close(socket) end)
        %{st | open: open}
      end,
      stop: fn st ->
        Enum.each(st.open, fn {_, socket} -> :gen_udp.close(socket) end)
        Actor.stop(st.owner)
      end
    }
  end

  def workload(:worker_restarts) do
    # One worker of a supervisor killed (and restarted) every 30 s.
    %{
      start: fn ->
        owner = Actor.start(Bench.RestartOwner)

        Actor.run(owner, fn s ->
          {:ok, _} =
            Supervisor.start_link([{Bench.Signal.Flaky, Bench.Worker}],
              strategy: :one_for_one,
              # Restart intensity counts real seconds, and time is compressed.
              max_restarts: 1_000,
              max_seconds: 1,
              name: Bench.Workers
            )

          {:ok, s}
        end)

        %{owner: owner}
      end,
      step: fn st, from, to ->
        for _ <- times(from, to, 30_000, 3_000), do: restart(Bench.Worker, :kill)
        st
      end,
      stop: fn st -> Supervisor.stop(Bench.Workers) && Actor.stop(st.owner) end
    }
  end

  def workload(:db_traffic) do
    # 30 queries a second, 2-8 ms each, on two tables.
    %{
      start: fn -> %{i: 0} end,
      step: fn st, from, to ->
        n = count(from, to, 30)

        for i <- 1..n//1 do
          k = st.i + i
          source = if rem(k, 3) == 0, do: "orders", else: "users"
          query(source, "SELECT * FROM #{source} WHERE id = $1", 2 + rem(k, 7), 0.2)
        end

        %{st | i: st.i + n}
      end,
      stop: fn _ -> :ok end
    }
  end

  ## Faults

  def fault(:ets_leak) do
    %{
      expect: [ets: ~w(ets_memory_growth ets_table_growth)],
      culprit: "bench_sessions",
      start: fn ->
        owner = Actor.start(Bench.SessionStore)
        Actor.run(owner, fn _ -> {:ok, :ets.new(:bench_sessions, [:named_table, :public])} end)
        %{owner: owner, n: 0}
      end,
      step: fn st, from, to ->
        n = min(count(from, to, 10_000), 2_000_000 - st.n)

        for j <- 1..n//1,
            do: :ets.insert(:bench_sessions, {st.n + j, "session-#{st.n + j}", st.n, j})

        %{st | n: st.n + n}
      end,
      stop: fn st -> Actor.stop(st.owner) end
    }
  end

  def fault(:process_leak), do: leak(Bench.Leaker, &Worker.leak_loop/0, "Worker.leak_loop")

  def fault(:boot_leak),
    do: leak(Bench.BootLeaker, &Worker.boot_leak_loop/0, "Worker.boot_leak_loop")

  def fault(:atom_leak) do
    %{
      expect: [beam: ~w(atom_growth atom_count_high)],
      culprit: nil,
      start: fn -> %{n: 0, base: System.unique_integer([:positive])} end,
      step: fn st, from, to ->
        n = min(count(from, to, 500), 60_000 - st.n)
        for j <- 1..n//1, do: _ = String.to_atom("bench_atom_#{st.base}_#{st.n + j}")
        %{st | n: st.n + n}
      end,
      stop: fn _ -> :ok end
    }
  end

  def fault(:binary_leak) do
    %{
      expect: [beam: ~w(binary_memory_growth memory_growth)],
      culprit: "Bench.BinHolder",
      start: fn -> %{owner: Actor.start(Bench.BinHolder), bytes: 0} end,
      step: fn st, from, to ->
        n = min(count(from, to, 16), div(600 * 1024 * 1024 - st.bytes, 256 * 1024))

        Actor.run(st.owner, fn held ->
          {:ok, for(_ <- 1..n//1, do: :binary.copy(<<7>>, 256 * 1024)) ++ (held || [])}
        end)

        %{st | bytes: st.bytes + n * 256 * 1024}
      end,
      stop: fn st -> Actor.stop(st.owner) end
    }
  end

  def fault(:mailbox_buildup) do
    %{
      expect: [beam: ~w(mailbox_buildup)],
      culprit: "Bench.SlowConsumer",
      start: fn ->
        pid = spawn(&Worker.slow_consumer/0)
        Process.register(pid, Bench.SlowConsumer)
        %{pid: pid, n: 0}
      end,
      step: fn st, from, to ->
        n = min(count(from, to, 2_000), 300_000 - st.n)
        for j <- 1..n//1, do: send(st.pid, {:job, st.n + j})
        %{st | n: st.n + n}
      end,
      stop: fn st -> Actor.stop(st.pid) end
    }
  end

  def fault(:run_queue_saturation) do
    %{
      expect: [beam: ~w(run_queue_high scheduler_utilization_high)],
      culprit: "Worker.spin",
      start: fn ->
        owner = Actor.start(Bench.Spinner)

        spinners =
          Actor.run(owner, fn s -> {for(_ <- 1..8, do: spawn(fn -> Worker.spin() end)), s} end)

        %{owner: owner, spinners: spinners}
      end,
      step: fn st, _from, _to -> st end,
      stop: fn st ->
        Enum.each(st.spinners, &Process.exit(&1, :kill))
        Actor.stop(st.owner)
      end
    }
  end

  def fault(:restart_storm) do
    # A child crashing every 200 ms (5 restarts a second).
    %{
      expect: [sup: ~w(restart_storm)],
      culprit: "Bench.FlakySup",
      start: fn ->
        owner = Actor.start(Bench.FlakyOwner)

        Actor.run(owner, fn s ->
          {:ok, _} =
            Supervisor.start_link([{Bench.Signal.Flaky, Bench.FlakyWorker}],
              strategy: :one_for_one,
              max_restarts: 1_000_000,
              max_seconds: 1,
              name: Bench.FlakySup
            )

          {:ok, s}
        end)

        %{owner: owner}
      end,
      step: fn st, from, to ->
        for _ <- times(from, to, 200), do: restart(Bench.FlakyWorker, :crash)
        st
      end,
      stop: fn st -> Supervisor.stop(Bench.FlakySup) && Actor.stop(st.owner) end
    }
  end

  def fault(:error_burst) do
    %{
      expect: [logger: ~w(error_log_burst)],
      culprit: "Bench.Signal.PaymentClient",
      start: fn -> %{i: 0} end,
      step: fn st, from, to ->
        n = count(from, to, 20)
        for i <- 1..n//1, do: Bench.Signal.PaymentClient.fail(st.i + i)
        %{st | i: st.i + n}
      end,
      stop: fn _ -> :ok end
    }
  end

  def fault(:port_leak) do
    %{
      expect: [ports: ~w(port_leak socket_growth port_count_high)],
      culprit: "Bench.SocketLeaker",
      start: fn -> %{owner: Actor.start(Bench.SocketLeaker), n: 0} end,
      step: fn st, from, to ->
        n = min(count(from, to, 20), 2_000 - st.n)

        Actor.run(st.owner, fn s ->
          {:ok, for(_ <- 1..n//1, do: elem(:gen_udp.open(0), 1)) ++ (s || [])}
        end)

        %{st | n: st.n + n}
      end,
      stop: fn st -> Actor.stop(st.owner) end
    }
  end

  def fault(:large_heap) do
    # A process holding a ~270 MB heap (17M list cells), rebuilt every 10 s.
    %{
      expect: [gc: ~w(large_heap_process gc_pressure)],
      culprit: "Bench.BigState",
      start: fn ->
        owner = Actor.start(Bench.BigState)
        Actor.run(owner, fn _ -> {:ok, Enum.to_list(1..17_000_000)} end)
        %{owner: owner}
      end,
      step: fn st, from, to ->
        for _ <- times(from, to, 10_000) do
          Actor.run(st.owner, fn list -> {:ok, Enum.map(list, &(&1 + 1))} end)
        end

        st
      end,
      stop: fn st -> Actor.stop(st.owner) end
    }
  end

  def fault(:slow_queries) do
    %{
      expect: [ecto: ~w(slow_queries request_latency)],
      culprit: "invoices",
      start: fn -> %{i: 0} end,
      step: fn st, from, to ->
        n = count(from, to, 10)

        for _ <- 1..n//1,
            do:
              query(
                "invoices",
                "SELECT * FROM invoices WHERE total > $1 ORDER BY created_at",
                450,
                0.2
              )

        %{st | i: st.i + n}
      end,
      stop: fn _ -> :ok end
    }
  end

  def fault(:pool_saturation) do
    %{
      expect: [ecto: ~w(pool_saturation request_latency)],
      culprit: "Bench.Signal.Repo",
      start: fn -> %{i: 0} end,
      step: fn st, from, to ->
        n = count(from, to, 40)

        for i <- 1..n//1,
            do: query("users", "SELECT * FROM users WHERE id = $1", 3, 150 + rem(i, 50))

        %{st | i: st.i + n}
      end,
      stop: fn _ -> :ok end
    }
  end

  def fault(:exception_burst) do
    %{
      expect: [exception: ~w(exception_burst new_exception_group)],
      culprit: "Bench.Signal.CheckoutError",
      start: fn -> %{} end,
      step: fn st, from, to ->
        for _ <- 1..count(from, to, 10)//1,
            do:
              report_exception(Bench.Signal.CheckoutError, "card declined", Bench.Signal.Checkout)

        st
      end,
      stop: fn _ -> :ok end
    }
  end

  defp leak(name, fun, culprit) do
    %{
      expect: [beam: ~w(process_leak process_count_high)],
      culprit: culprit,
      start: fn -> %{owner: Actor.start(name), n: 0} end,
      step: fn st, from, to ->
        n = min(count(from, to, 100), 40_000 - st.n)
        Actor.run(st.owner, fn s -> {:ok, for(_ <- 1..n//1, do: spawn(fun)) ++ (s || [])} end)
        %{st | n: st.n + n}
      end,
      stop: fn st ->
        Actor.run(st.owner, fn s -> {Enum.each(s || [], &send(&1, :stop)), []} end)
        Actor.stop(st.owner)
      end
    }
  end

  # Crashes (or kills) a registered supervised worker and waits for its
  # restart, so that the next crash hits the new one.
  defp restart(name, how) do
    old = Process.whereis(name)

    case how do
      :kill -> Process.exit(old, :kill)
      :crash -> GenServer.cast(old, :crash)
    end

    wait_restart(name, old, 2_000)
  end

  defp wait_restart(_name, _old, 0), do: :gave_up

  defp wait_restart(name, old, n) do
    case Process.whereis(name) do
      pid when is_pid(pid) and pid != old -> :ok
      _ -> Process.sleep(1) && wait_restart(name, old, n - 1)
    end
  end

  # An Ecto SQL query event: measurements in native units, the real metadata keys.
  def query(source, sql, query_ms, queue_ms) do
    native = fn ms -> System.convert_time_unit(round(ms * 1_000), :microsecond, :native) end

    :telemetry.execute(
      [:bench, :repo, :query],
      %{
        query_time: native.(query_ms),
        queue_time: native.(queue_ms),
        decode_time: native.(0.05),
        total_time: native.(query_ms + queue_ms + 0.05)
      },
      %{
        type: :ecto_sql_query,
        repo: Bench.Signal.Repo,
        query: sql,
        params: [42],
        cast_params: [42],
        source: source,
        result: {:ok, %{num_rows: 1}},
        options: [],
        stacktrace: nil
      }
    )
  end

  # A Tower event, as Tower hands it to a reporter.
  def report_exception(exception, message, module) do
    Beamlens.Domain.Exception.ExceptionStore.report_event(%{
      id: System.unique_integer([:positive]),
      datetime: DateTime.utc_now(),
      level: :error,
      kind: :error,
      reason: exception.exception(message),
      stacktrace: [{module, :run, 1, [file: ~c"lib/bench.ex", line: 42]}],
      log_event: nil,
      plug_conn: nil,
      metadata: %{},
      by: nil,
      similarity_id: 1
    })
  end
end

defmodule Bench.Signal.Sim do
  # The watcher pipeline with a virtual clock: real snapshots, real gates,
  # the watcher's delivery rules, the real correlation engine.
  alias Beamlens.{Alert, Domain, Gate}
  alias Beamlens.Coordinator.Engine

  @watchers [
    beam: Beamlens.Domain.Beam,
    ets: Beamlens.Domain.Ets,
    gc: Beamlens.Domain.Gc,
    logger: Beamlens.Domain.Logger,
    ports: Beamlens.Domain.Ports,
    sup: Beamlens.Domain.Sup,
    ecto: Bench.Signal.EctoDomain,
    exception: Beamlens.Domain.Exception
  ]
  @cooldown 900_000
  @escalate_ratio 2.0
  @warmup 10
  @warmup_ms 60_000
  @epoch 1_800_000_000_000

  # The gate's shipped warm-up: 10 snapshots and at least 60 s.
  def warmup(tick_ms), do: max(@warmup, div(@warmup_ms + tick_ms - 1, tick_ms))

  def new(tick_ms) do
    gates =
      Map.new(@watchers, fn {name, _} ->
        {:ok, gate} = Gate.new(warmup: @warmup, cooldown_ms: @cooldown)
        {name, gate}
      end)

    {:ok, engine} = Engine.new(window_ms: 60_000, order_tolerance_ms: 5_000, max_alerts: 5_000)

    %{
      tick_ms: tick_ms,
      k: 0,
      gates: gates,
      metrics: %{},
      open: %{},
      engine: engine,
      insights: %{}
    }
  end

  def now(sim), do: sim.k * sim.tick_ms

  # Takes the snapshots of tick k and judges them; returns the alert events.
  def tick(sim) do
    t = now(sim)

    results =
      @watchers
      |> Task.async_stream(
        fn {name, domain} ->
          snapshot = domain.snapshot()
          {name, domain, domain.metrics(snapshot)}
        end,
        timeout: 60_000,
        max_concurrency: length(@watchers)
      )
      |> Enum.map(fn {:ok, r} -> r end)

    {sim, events} =
      Enum.reduce(results, {sim, []}, fn {name, domain, metrics}, {sim, events} ->
        {:ok, verdict} = Gate.observe(sim.gates[name], metrics, t)
        by_name = Map.new(metrics, &{&1.name, &1})
        sim = put_in(sim.metrics[name], by_name)

        verdict.findings
        |> Enum.filter(&(&1.status in ["new", "escalated"]))
        |> Enum.group_by(&by_name[&1.name].anomaly_type)
        |> Enum.reduce({sim, events}, fn {type, findings}, {sim, events} ->
          deliver(sim, name, domain, type, findings, t, events)
        end)
      end)

    fired = for %{kind: :fired, alert: a} <- events, do: a

    {:ok, r1} =
      if fired == [],
        do: {:ok, %{insights: []}},
        else: Engine.ingest(sim.engine, fired, @epoch + t)

    {:ok, r2} = Engine.advance(sim.engine, @epoch + t)

    insights =
      Enum.reduce(r1.insights ++ r2.insights, sim.insights, fn i, acc ->
        Map.put(acc, i["id"], i)
      end)

    {%{sim | k: sim.k + 1, insights: insights}, Enum.reverse(events)}
  end

  # As Beamlens.Watcher delivers a gate alert, with its own rules
  # (Beamlens.Watcher.Alerts): fire, fold a repeat of an open alert within
  # the cooldown, or fire again as an escalation when clearly worse.
  defp deliver(sim, watcher, domain, type, findings, t, events) do
    fingerprint = {watcher, type}
    open = sim.open[fingerprint]

    candidate = %{
      severity:
        if(Enum.any?(findings, &(&1.severity == :critical)), do: :critical, else: :warning),
      values: values(findings),
      escalated?: Enum.any?(findings, &(&1.status == "escalated"))
    }

    case Beamlens.Watcher.Alerts.decide(open, candidate, t, @cooldown, @escalate_ratio) do
      :fold ->
        sim = put_in(sim.open[fingerprint], Beamlens.Watcher.Alerts.fold(open))
        {sim, [%{kind: :folded, watcher: watcher, type: type, t: t} | events]}

      decision ->
        alert = gate_alert(sim.metrics[watcher], watcher, domain, type, findings, t)
        sim = put_in(sim.open[fingerprint], %{alert: alert, fired_at: t})
        escalated? = decision != :fire and open != nil

        event = %{
          kind: :fired,
          escalated?: escalated?,
          watcher: watcher,
          type: type,
          t: t,
          alert: alert
        }

        {sim, [event | events]}
    end
  end

  defp values(findings) do
    Map.new(
      findings,
      &{&1.name, Map.take(&1, [:value, :baseline, :threshold, :z, :severity, :samples])}
    )
  end

  defp gate_alert(metrics, watcher, domain, type, findings, t) do
    findings = Enum.sort_by(findings, &{&1.severity == :critical, &1.value}, :desc)
    lead = hd(findings)
    severity = if Enum.any?(findings, &(&1.severity == :critical)), do: :critical, else: :warning

    text = domain.summarize(lead, metrics[lead.name])

    summary =
      Enum.find_value(findings, text, fn f ->
        with %{} = m <- metrics[f.name], c when is_binary(c) <- Domain.culprit(m) do
          Domain.with_culprit(text, c, m[:entities] || [])
        end
      end)

    Alert.new(
      watcher: watcher,
      severity: severity,
      state: severity,
      anomaly_type: type,
      summary: summary,
      entities: findings |> Enum.flat_map(&(metrics[&1.name][:entities] || [])) |> Enum.uniq(),
      evidence: %{snapshot_ids: [], values: values(findings)},
      detected_at: DateTime.from_unix!(@epoch + t, :millisecond),
      source: :gate
    )
  end
end

defmodule Bench.Signal do
  alias Bench.Signal.{Load, Sim}

  @workloads ~w(cache_churn batch_jobs log_chatter alloc_churn socket_churn worker_restarts db_traffic busy_app)a
  @faults [
    :ets_leak,
    :process_leak,
    :boot_leak,
    :atom_leak,
    :binary_leak,
    :mailbox_buildup,
    :run_queue_saturation,
    :restart_storm,
    :error_burst,
    :port_leak,
    :large_heap,
    :slow_queries,
    :pool_saturation,
    :exception_burst,
    [:ets_leak, :process_leak],
    [:restart_storm, :error_burst],
    [:slow_queries, :exception_burst]
  ]
  # The busy application runs every workload at once.
  @busy ~w(cache_churn batch_jobs log_chatter alloc_churn socket_churn worker_restarts db_traffic)a
  # Faults run over a light background: logs and database traffic.
  @background ~w(log_chatter db_traffic)a

  # Ticks per run, by tick scale: {after warm-up for a workload, most for a
  # fault after its start}. 500 ms: 60 s of workload (3 cache cycles);
  # 30 s: 20 minutes.
  @plan %{500 => {120, 120}, 30_000 => {40, 20}}
  @fault_at 3

  def main do
    part = System.get_env("PART", "all")

    ticks =
      System.get_env("TICKS", "500,30000")
      |> String.split(",", trim: true)
      |> Enum.map(&String.to_integer/1)

    only = System.get_env("ONLY", "") |> String.split(",", trim: true)

    {:ok, _} = Beamlens.LogStore.start_link([])
    {:ok, _} = Beamlens.Domain.Exception.ExceptionStore.start_link([])
    {:ok, _} = Registry.start_link(keys: :unique, name: Beamlens.Domain.Ecto.Registry)
    {:ok, _} = Beamlens.Domain.Ecto.TelemetryStore.start_link(repo: Bench.Signal.Repo)

    cases =
      if(part in ["all", "workloads"], do: Enum.map(@workloads, &{:workload, &1}), else: []) ++
        if part in ["all", "faults"], do: Enum.map(@faults, &{:fault, &1}), else: []

    cases = Enum.filter(cases, fn {_, c} -> only == [] or label(c) in only end)
    started = System.monotonic_time(:millisecond)

    rows =
      for {kind, c} <- cases do
        results =
          Map.new(ticks, fn tick ->
            t0 = System.monotonic_time(:millisecond)

            r =
              if kind == :workload, do: run_workload(c, tick), else: run_fault(List.wrap(c), tick)

            IO.puts(
              :stderr,
              "  #{label(c)} @ #{tick} ms: #{System.monotonic_time(:millisecond) - t0} ms  #{inspect(r.notes)}"
            )

            {tick, r}
          end)

        {kind, c, results}
      end

    rows = if model?(), do: Enum.map(rows, &with_model/1), else: rows
    print(rows, ticks)
    IO.puts("\nWall time: #{div(System.monotonic_time(:millisecond) - started, 1000)} s")
  end

  ## The model's columns

  defp model?, do: System.get_env("BEAMLENS_REAL_MODEL_URL") not in [nil, ""]

  # Built-in watchers only: the model runs go through Beamlens.RealModel.
  @builtin ~w(beam ets gc logger ports sup exception)a

  defp with_model({:fault, name, results} = row) when is_atom(name) do
    f = Load.fault(name)

    case f.expect do
      [{watcher, types}] when watcher in @builtin ->
        {:fault, name, Map.put(results, :model, model_run(name, f, watcher, types))}

      _ ->
        row
    end
  end

  defp with_model(row), do: row

  defp model_run(name, f, watcher, types) do
    scenario = %{
      name: Atom.to_string(name),
      watcher: watcher,
      expected_types: types,
      cause_words: [],
      inject: fn -> spawn(fn -> pace(f) end) end,
      heal: fn pacer ->
        ref = Process.monitor(pacer)
        send(pacer, :stop)
        receive do: ({:DOWN, ^ref, _, _, _} -> :ok)
      end
    }

    run = Beamlens.RealModel.fault(scenario, check_timeout: 300_000)
    facts = Beamlens.RealModel.facts(run, scenario)
    needle = f.culprit && String.downcase(f.culprit)

    # The model's own words: its summary without the culprit the code appends.
    own? =
      Enum.any?(facts.model_alerts, fn a ->
        summary = String.replace(a.summary, ~r/ \(culprit: .*\)$/s, "")
        text = String.downcase("#{summary} #{a.observation} #{a.hypothesis}")
        needle != nil and String.contains?(text, needle)
      end)

    IO.puts(:stderr, "  model #{name}: #{inspect(Enum.map(facts.model_alerts, & &1.summary))}")

    %{
      alerted: facts.right_type?,
      culprit: if(needle, do: own?, else: nil),
      s_per_check: facts.ms_per_check / 1000
    }
  end

  # Steps a fault in real time (every 250 ms) until told to stop.
  defp pace(f) do
    t0 = System.monotonic_time(:millisecond)
    pace(f, f.start.(), t0, 0)
  end

  defp pace(f, st, t0, prev) do
    receive do
      :stop -> f.stop.(st)
    after
      250 ->
        now = System.monotonic_time(:millisecond) - t0
        pace(f, f.step.(st, prev, now), t0, now)
    end
  end

  defp label(c) when is_list(c), do: Enum.map_join(c, "+", &Atom.to_string/1)
  defp label(c), do: Atom.to_string(c)

  ## Runs

  defp run_workload(name, tick) do
    {after_warmup, _} = @plan[tick]
    loads = if name == :busy_app, do: @busy, else: [name]
    states = Enum.map(loads, &start(Load.workload(&1)))
    sim = Sim.new(tick)
    total = Sim.warmup(tick) + after_warmup

    {_sim, states, events} =
      Enum.reduce(0..(total - 1), {sim, states, []}, fn _, {sim, states, events} ->
        states = step(states, sim)
        {sim, evs} = Sim.tick(sim)
        {sim, states, events ++ Enum.map(evs, &Map.put(&1, :k, sim.k - 1))}
      end)

    stop(states)
    fired = for %{kind: :fired} = e <- events, e.k >= Sim.warmup(tick), do: e
    hours = after_warmup * tick / 3_600_000

    %{
      false_alerts: length(fired),
      per_hour: length(fired) / hours,
      warmup_alerts: Enum.count(events, &(&1.kind == :fired and &1.k < Sim.warmup(tick))),
      notes: fired |> Enum.map(&"#{&1.type}@#{&1.k}") |> Enum.take(6)
    }
  end

  defp run_fault(names, tick) do
    {_, most} = @plan[tick]
    faults = Enum.map(names, &{&1, Load.fault(&1)})
    boot? = :boot_leak in names
    at = if boot?, do: 0, else: Sim.warmup(tick) + @fault_at
    background = Enum.map(@background, &start(Load.workload(&1)))
    sim = Sim.new(tick)

    expected = for {_, f} <- faults, {watcher, types} <- f.expect, do: {watcher, types}

    {events, fstates, sim} = loop(sim, background, faults, nil, at, most, expected, [])
    stop(background)
    Enum.each(fstates || [], fn {f, st} -> f.stop.(st) end)
    :erlang.garbage_collect()

    during = Enum.filter(events, &(&1.k >= at))
    fired = Enum.filter(during, &(&1.kind == :fired))

    expected? = fn e ->
      Enum.any?(expected, fn {w, types} -> e.watcher == w and e.type in types end)
    end

    hits = Enum.filter(fired, expected?)

    firsts =
      for {w, types} <- expected do
        Enum.find(hits, &(&1.watcher == w and &1.type in types))
      end

    detected? = Enum.all?(firsts)
    watchers = fired |> Enum.map(& &1.watcher) |> Enum.uniq()

    culprit =
      case Enum.map(faults, fn {_, f} -> f.culprit end) |> Enum.zip(firsts) do
        pairs ->
          cond do
            Enum.all?(pairs, fn {c, _} -> c == nil end) -> "n/a"
            not detected? -> "-"
            Enum.all?(pairs, fn {c, e} -> c == nil or e.alert.summary =~ c end) -> "yes"
            true -> "no"
          end
      end

    %{
      detected: detected?,
      ticks: if(detected?, do: Enum.max(Enum.map(firsts, & &1.k)) - at + 1),
      expected_alerts: Enum.count(hits, &(not &1.escalated?)),
      escalations: Enum.count(hits, & &1.escalated?),
      parts: length(expected),
      other_alerts: length(fired) - length(hits),
      culprit: culprit,
      insights: if(length(watchers) >= 2, do: map_size(sim.insights)),
      notes:
        Enum.map(
          fired,
          &"#{&1.watcher}/#{&1.type}@#{&1.k - at + 1}#{if &1[:escalated?], do: " (esc.)"}"
        ) ++
          Enum.map(Enum.reject(firsts, &is_nil/1), &String.slice(&1.alert.summary, 0, 160))
    }
  end

  # Runs ticks until every expected type was alerted plus 6 ticks (to see
  # repeats), or `most` ticks after the fault started.
  defp loop(sim, background, faults, fstates, at, most, expected, events) do
    k = sim.k
    fstates = if k == at, do: Enum.map(faults, fn {_, f} -> {f, f.start.()} end), else: fstates
    background = step(background, sim)

    fstates =
      if fstates,
        do:
          Enum.map(fstates, fn {f, st} ->
            {f, f.step.(st, max(Sim.now(sim) - sim.tick_ms, 0), Sim.now(sim))}
          end)

    {sim, evs} = Sim.tick(sim)
    events = events ++ Enum.map(evs, &Map.put(&1, :k, k))

    done_at =
      Enum.map(expected, fn {w, types} ->
        Enum.find_value(
          events,
          &(&1.kind == :fired and &1.k >= at and &1.watcher == w and &1.type in types and &1.k)
        )
      end)

    cond do
      k - at + 1 >= most -> {events, fstates, sim}
      Enum.all?(done_at) and k - Enum.max(done_at) >= 6 -> {events, fstates, sim}
      true -> loop(sim, background, faults, fstates, at, most, expected, events)
    end
  end

  defp start(load), do: {load, load.start.()}
  defp stop(states), do: Enum.each(states, fn {load, st} -> load.stop.(st) end)

  defp step(states, sim) do
    to = Sim.now(sim)
    from = max(to - sim.tick_ms, 0)
    if System.get_env("DEBUG"), do: IO.puts(:stderr, "    tick #{sim.k} at #{to} ms")
    Enum.map(states, fn {load, st} -> {load, load.step.(st, from, to)} end)
  end

  ## Output

  defp print(rows, ticks) do
    scale = fn t -> if t >= 1000, do: "#{div(t, 1000)} s", else: "#{t} ms" end

    head =
      Enum.map_join(
        ticks,
        " | ",
        &"#{scale.(&1)}: detected / ticks / alerts / culprit / insights / false/h"
      )

    model_head =
      if model?(),
        do: " model (1 s tick, real time): alerted / named culprit / s per check |",
        else: ""

    IO.puts("\n| case | #{head} |#{model_head}")
    IO.puts("|---|" <> String.duplicate("---|", length(ticks) + if(model?(), do: 1, else: 0)))

    for {kind, c, results} <- rows do
      cells =
        Enum.map_join(ticks, " | ", fn tick ->
          r = results[tick]

          case kind do
            :fault ->
              alerts =
                "#{r.expected_alerts}/#{r.parts}" <>
                  if(r.escalations > 0, do: " +#{r.escalations} esc.", else: "") <>
                  if(r.other_alerts > 0, do: " +#{r.other_alerts} other", else: "")

              Enum.join(
                [
                  if(r.detected, do: "yes", else: "**no**"),
                  r.ticks || "-",
                  alerts,
                  r.culprit,
                  if(r.insights, do: r.insights, else: "-"),
                  "-"
                ],
                " / "
              )

            :workload ->
              fh = :erlang.float_to_binary(r.per_hour * 1.0, decimals: 0)

              "- / - / - / - / - / " <>
                if(r.false_alerts == 0, do: "0", else: "**#{fh}** (#{r.false_alerts})")
          end
        end)

      model =
        case results[:model] do
          nil ->
            if model?(), do: " - |", else: ""

          m ->
            yn = fn
              nil -> "n/a"
              true -> "yes"
              false -> "no"
            end

            " #{yn.(m.alerted)} / #{yn.(m.culprit)} / " <>
              "#{:erlang.float_to_binary(m.s_per_check * 1.0, decimals: 1)} |"
        end

      IO.puts(
        "| #{if kind == :fault, do: "fault", else: "workload"} #{label(c)} | #{cells} |#{model}"
      )
    end

    IO.puts(
      "\nNotes (alerts as watcher/type@tick since the fault started; summaries of the first alerts):"
    )

    for {_kind, c, results} <- rows, tick <- ticks, r = results[tick], r.notes != [] do
      IO.puts("- #{label(c)} @ #{scale.(tick)}: #{Enum.join(r.notes, "; ")}")
    end
  end
end

Bench.Signal.main()
