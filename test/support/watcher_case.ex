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
