defmodule Beamlens.WatcherCase do
  @moduledoc """
  Shared setup for tests that run real watchers: starts BeamLens under the
  test supervisor with fast ticks, and forwards BeamLens telemetry events to
  the test process as `{:telemetry, event, measurements, metadata}`.
  """

  use ExUnit.CaseTemplate

  @events [
    [:beamlens, :watcher, :alert_fired],
    [:beamlens, :watcher, :alert_folded],
    [:beamlens, :watcher, :state_changed],
    [:beamlens, :watcher, :snapshot_failed]
  ]

  using do
    quote do
      import Beamlens.WatcherCase
    end
  end

  setup context do
    handler = "beamlens-test-#{inspect(context.module)}-#{context.test}"
    :ok = :telemetry.attach_many(handler, @events, &__MODULE__.forward/4, self())
    # BeamLens sets the node-wide token budget when it starts with a model.
    on_exit(fn ->
      :telemetry.detach(handler)
      Beamlens.LLM.set_budget(:infinity)
    end)

    %{instance: Module.concat(BeamlensTest, "I#{System.unique_integer([:positive])}")}
  end

  @doc false
  def forward(event, measurements, metadata, pid),
    do: send(pid, {:telemetry, event, measurements, metadata})

  @doc """
  Runs `fun` while the given watchers of `instance` take no snapshot, and
  returns its result: a fault injected this way appears all at once between
  two snapshots, as on a fast machine. Injected step by step on a slow or
  loaded machine, it would grow over many ticks and the gate's baselines
  would follow it.
  """
  def between_snapshots(instance, watchers, fun) do
    pids = Enum.map(watchers, &Beamlens.Watcher.whereis(instance, &1))
    Enum.each(pids, &:sys.suspend/1)

    try do
      fun.()
    after
      Enum.each(pids, &:sys.resume/1)
    end
  end

  @doc "Starts BeamLens with fast defaults for tests; returns the instance name."
  def start_beamlens(instance, opts) do
    opts =
      Keyword.merge(
        [
          name: instance,
          interval: 50,
          warmup: 5,
          provider: :none,
          gate: [cooldown_ms: 60_000, warmup_ms: 0, growth_window_ms: 500]
        ],
        opts
      )

    ExUnit.Callbacks.start_supervised!({Beamlens, opts}, id: instance)
    instance
  end

  @doc """
  Starts a scripted provider (`Beamlens.LoopbackServer`) under the test
  supervisor and forwards the extra telemetry `events` to the test process
  as `{:telemetry, event, measurements, metadata}`. Returns the server.
  """
  def start_provider(events) do
    server = ExUnit.Callbacks.start_supervised!(Beamlens.LoopbackServer)
    handler = "beamlens-provider-#{System.unique_integer([:positive])}"
    :ok = :telemetry.attach_many(handler, events, &__MODULE__.forward/4, self())
    ExUnit.Callbacks.on_exit(fn -> :telemetry.detach(handler) end)
    server
  end

  @doc """
  Waits until `watcher` has taken `n` snapshots. A loaded 2-core machine
  took 5 s for 6 snapshots of :ets at a 50 ms interval: the default bound
  is one only a stuck watcher reaches.
  """
  def await_ticks(instance, watcher, n, timeout \\ 60_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    do_await_ticks(instance, watcher, n, deadline)
  end

  defp do_await_ticks(instance, watcher, n, deadline) do
    info = Beamlens.Watcher.info(Beamlens.Watcher.whereis(instance, watcher))

    cond do
      info.ticks >= n ->
        info

      System.monotonic_time(:millisecond) > deadline ->
        raise ExUnit.AssertionError,
              "watcher #{inspect(watcher)} took only #{info.ticks} snapshots"

      true ->
        Process.sleep(20)
        do_await_ticks(instance, watcher, n, deadline)
    end
  end

  @doc """
  Receives the next alert of `type` fired by `watcher`, or flunks. The
  default bound is one only a broken gate reaches: under load a snapshot
  alone can take a second.
  """
  defmacro assert_alert(watcher, type, timeout \\ 30_000) do
    quote do
      assert_receive {:telemetry, [:beamlens, :watcher, :alert_fired], _,
                      %{
                        alert:
                          %Beamlens.Alert{watcher: unquote(watcher), anomaly_type: unquote(type)} =
                            alert
                      }},
                     unquote(timeout)

      alert
    end
  end

  @doc """
  Receives the next alert of `type` fired by `watcher`, or flunks once the
  watcher has taken `ticks` more snapshots without firing it. Counted in
  snapshots, not wall time: a loaded machine takes longer per snapshot, and
  the gate judges per snapshot. Other alerts (a loaded machine's run queue,
  say) stay in the mailbox.
  """
  def await_alert(instance, watcher, type, ticks \\ 40) do
    {:telemetry, _, _, %{alert: alert}} =
      await_event(
        instance,
        watcher,
        &match?(
          {:telemetry, [:beamlens, :watcher, :alert_fired], _,
           %{alert: %Beamlens.Alert{watcher: ^watcher, anomaly_type: ^type}}},
          &1
        ),
        ticks,
        "a #{type} alert"
      )

    alert
  end

  @doc """
  Receives `watcher`'s next state change into one of `states`, or flunks
  once it has taken `ticks` more snapshots without one (see
  `await_event/5`).
  """
  def await_state(instance, watcher, states, ticks \\ 40) do
    await_event(
      instance,
      watcher,
      fn
        {:telemetry, [:beamlens, :watcher, :state_changed], _, %{watcher: ^watcher, to: to}} ->
          to in states

        _ ->
          false
      end,
      ticks,
      "a change to #{Enum.map_join(states, " or ", &inspect/1)}"
    )
  end

  @doc """
  Receives the first message in the mailbox for which `match?` returns
  true, waiting until `watcher` has taken `ticks` more snapshots, then
  flunks naming `what`. Messages that do not match stay in the mailbox.
  A watcher emits its telemetry before it answers the next call, so once
  it reports the last counted snapshot, whatever that snapshot emitted is
  here.
  """
  def await_event(instance, watcher, match?, ticks \\ 40, what \\ "the event") do
    pid = Beamlens.Watcher.whereis(instance, watcher)
    limit = Beamlens.Watcher.info(pid).ticks + ticks
    do_await_event(pid, watcher, match?, limit, what)
  end

  defp do_await_event(pid, watcher, match?, limit, what) do
    taken = Beamlens.Watcher.info(pid).ticks
    {:messages, messages} = Process.info(self(), :messages)

    case Enum.find(messages, match?) do
      nil when taken >= limit ->
        raise ExUnit.AssertionError,
              "no #{what} from #{inspect(watcher)} within #{taken} snapshots"

      nil ->
        Process.sleep(20)
        do_await_event(pid, watcher, match?, limit, what)

      message ->
        receive do: (^message -> message)
    end
  end

  @doc "Collects every alert received within `ms`."
  def collect_alerts(ms) do
    receive do
      {:telemetry, [:beamlens, :watcher, :alert_fired], _, %{alert: alert}} ->
        [alert | collect_alerts(ms)]
    after
      ms -> []
    end
  end
end
