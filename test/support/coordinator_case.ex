defmodule Beamlens.CoordinatorCase do
  @moduledoc false
  # Shared setup for coordinator tests: alerts shaped like the ones the
  # watchers fire, a coordinator with its own :pg scope, telemetry events
  # forwarded to the test process, and peer nodes for cluster tests.
  #
  # End-to-end tests with real watchers can reuse `start_coordinator/2` and
  # `attach_coordinator_events/1`, and feed the alerts the watchers fire.
  use ExUnit.CaseTemplate

  alias Beamlens.{Alert, Coordinator}

  using do
    quote do
      import Beamlens.CoordinatorCase
      alias Beamlens.{Alert, Coordinator, Insight}
    end
  end

  @events [
    [:beamlens, :coordinator, :insight_produced],
    [:beamlens, :coordinator, :insight_updated],
    [:beamlens, :coordinator, :alert_dropped],
    [:beamlens, :coordinator, :leader_changed],
    [:beamlens, :coordinator, :summary_failed]
  ]

  # The watcher that fires each anomaly type of the shared vocabulary.
  @watchers %{
    beam:
      ~w(memory_growth process_memory_growth binary_memory_growth process_count_high process_leak
         atom_count_high atom_growth run_queue_high scheduler_utilization_high mailbox_buildup),
    ets: ~w(ets_memory_growth ets_table_growth ets_table_count_high),
    gc: ~w(gc_pressure large_heap_process),
    logger: ~w(error_log_burst warning_log_burst connection_errors),
    ports: ~w(port_count_high port_leak fd_usage_high socket_growth),
    sup: ~w(restart_storm supervisor_child_growth),
    system: ~w(cpu_load_high system_memory_high disk_usage_high),
    ecto: ~w(slow_queries pool_saturation query_error_rate request_latency),
    exception: ~w(exception_burst new_exception_group)
  }

  @watcher_of for {watcher, types} <- @watchers, type <- types, into: %{}, do: {type, watcher}

  @doc """
  An alert of `anomaly_type` as its watcher would fire it. Options:
  `:ago_ms` (detected that long before `:now`), `:now` (a `DateTime`,
  default the current time: pass one clock to several alerts whose spacing
  a test asserts), `:node`, `:entities`, `:severity`, `:watcher`.
  """
  def alert(anomaly_type, opts \\ []) do
    watcher = Keyword.get_lazy(opts, :watcher, fn -> Map.fetch!(@watcher_of, anomaly_type) end)
    ago = Keyword.get(opts, :ago_ms, 0)

    Alert.new(
      watcher: watcher,
      severity: Keyword.get(opts, :severity, :warning),
      anomaly_type: anomaly_type,
      summary: "#{anomaly_type} detected",
      observation: "test fault",
      entities: Keyword.get(opts, :entities, []),
      node: Keyword.get(opts, :node, node()),
      detected_at:
        DateTime.add(Keyword.get_lazy(opts, :now, &DateTime.utc_now/0), -ago, :millisecond)
    )
  end

  @doc """
  Starts a coordinator with a fresh :pg scope, both named after the test,
  and returns its name.
  """
  def start_coordinator(context, opts \\ []) do
    suffix = :erlang.phash2({context.module, context.test})
    scope = :"beamlens_pg_#{suffix}"
    name = :"beamlens_coordinator_#{suffix}"
    start_supervised!(%{id: scope, start: {:pg, :start_link, [scope]}})
    start_supervised!({Coordinator, Keyword.merge([name: name, pg_scope: scope], opts)})
    name
  end

  @doc """
  Forwards the coordinator's telemetry events to the calling process as
  `{:coordinator_event, name, measurements, metadata}` (name is the last
  element of the event).
  """
  def attach_coordinator_events(context) do
    id = "coordinator-case-#{inspect(context.module)}-#{context.test}"
    :ok = :telemetry.attach_many(id, @events, &__MODULE__.forward/4, {node(), self()})
    ExUnit.Callbacks.on_exit(fn -> :telemetry.detach(id) end)
    :ok
  end

  @doc false
  def forward(event, measurements, metadata, {origin, pid}) do
    send(
      pid,
      {:coordinator_event, List.last(event), measurements, Map.put(metadata, :from, origin)}
    )
  end

  @doc """
  Waits until the coordinator has handled everything sent before, however
  long that takes on this machine (the test's own timeout bounds it).
  """
  def sync(name), do: {:ok, _} = GenServer.call(name, :stats, :infinity)

  ## Peer nodes

  @doc """
  Makes this VM a distributed node (loopback only). Returns `true` when it is.
  """
  def ensure_distributed do
    Node.alive?() or
      with {_, 0} <-
             System.cmd("epmd", ["-daemon", "-address", "127.0.0.1"], stderr_to_stdout: true),
           :ok <- Application.put_env(:kernel, :inet_dist_use_interface, {127, 0, 0, 1}),
           {:ok, _} <-
             Node.start(:"beamlens_test_#{System.unique_integer([:positive])}@127.0.0.1") do
        true
      else
        _ -> false
      end
  rescue
    _ -> false
  end

  @doc """
  Starts a peer node named `name@127.0.0.1` with this VM's code path, and
  returns `{peer, node}`. The peer is stopped when the test exits.
  """
  def start_peer(name) do
    {:ok, peer, node} =
      :peer.start_link(%{
        name: name,
        host: ~c"127.0.0.1",
        longnames: true,
        args: [~c"-kernel", ~c"inet_dist_use_interface", ~c"{127,0,0,1}"]
      })

    # :peer.call/4 needs an alternative connection; this peer is reached
    # through distribution.
    :ok = :erpc.call(node, :code, :add_paths, [:code.get_path()])
    {:ok, _} = :erpc.call(node, :application, :ensure_all_started, [:elixir])
    {:ok, _} = :erpc.call(node, :application, :ensure_all_started, [:logger])
    # The real telemetry library needs its application; the stand-in does not.
    _ = :erpc.call(node, :application, :ensure_all_started, [:telemetry])
    :ok = :erpc.call(node, Logger, :configure, [[level: :warning]])

    ExUnit.Callbacks.on_exit(fn ->
      try do
        :peer.stop(peer)
      catch
        :exit, _ -> :ok
      end
    end)

    {peer, node}
  end

  @doc """
  Starts, on `node`, a :pg scope and a coordinator that outlive the call,
  and forwards the coordinator's telemetry events there to `pid`.
  """
  def start_remote_coordinator(node, opts, pid) do
    :erpc.call(node, __MODULE__, :remote_start, [opts, pid])
  end

  @doc false
  def remote_start(opts, pid) do
    :ok = :telemetry.attach_many({:forward, pid}, @events, &__MODULE__.forward/4, {node(), pid})
    {:ok, _} = :pg.start(Keyword.fetch!(opts, :pg_scope))
    {:ok, coordinator} = Coordinator.start_link(opts)
    Process.unlink(coordinator)
    coordinator
  end
end
