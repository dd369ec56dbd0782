defmodule Beamlens.CoordinatorClusterTest do
  # Real peer nodes started with OTP's :peer; each runs a coordinator.
  use Beamlens.CoordinatorCase, async: false

  @moduletag :distributed
  @moduletag timeout: 120_000

  setup context do
    suffix = System.unique_integer([:positive])
    # Names chosen so that the first sorts lowest: it is the leader.
    {peer_a, a} = start_peer(:"coord_a_#{suffix}")
    {_peer_b, b} = start_peer(:"coord_b_#{suffix}")
    opts = [name: :"coordinator_#{suffix}", pg_scope: :"pg_#{suffix}", leader_warmup_ms: 0]

    for node <- [a, b], do: start_remote_coordinator(node, opts, self())

    # Both coordinators see each other and agree on the leader.
    for node <- [a, b] do
      wait_until(fn -> match?({:ok, %{members: 2, leader: ^a}}, stats_on(node, opts[:name])) end)
    end

    Map.merge(context, %{
      a: a,
      b: b,
      peer_a: peer_a,
      name: opts[:name],
      opts: opts,
      suffix: suffix
    })
  end

  defp report_on(node, name, alert) do
    :ok = :erpc.call(node, Coordinator, :report_alert, [name, alert])
  end

  defp stats_on(node, name), do: :erpc.call(node, Coordinator, :stats, [name])

  # Polls the peers' state until `fun` holds; peers are OS processes that a
  # loaded machine may start slowly, so the bound is generous: only a broken
  # build reaches it.
  defp wait_until(fun, timeout_ms \\ 30_000) do
    deadline = System.monotonic_time(:millisecond) + timeout_ms
    do_wait_until(fun, deadline)
  end

  defp do_wait_until(fun, deadline) do
    cond do
      fun.() -> :ok
      System.monotonic_time(:millisecond) > deadline -> flunk("condition not reached")
      true -> Process.sleep(20) && do_wait_until(fun, deadline)
    end
  end

  test "alerts on two nodes become one insight, produced once, by the leader", ctx do
    %{a: a, b: b, name: name} = ctx
    on_a = alert("connection_errors", node: a, ago_ms: 3_000)
    on_b = alert("connection_errors", node: b)
    report_on(a, name, on_a)
    report_on(b, name, on_b)

    assert_receive {:coordinator_event, :insight_produced, _, %{insight: insight, from: ^a}},
                   5_000

    assert insight.correlation_type == :symptomatic
    assert insight.nodes == Enum.sort([a, b])
    assert Enum.sort(insight.alert_ids) == Enum.sort([on_a.id, on_b.id])
    assert insight.produced_by == a

    # The follower holds the same insight (same id and version) but says
    # nothing.
    wait_until(fn -> match?({:ok, %{received: 2}}, stats_on(b, name)) end)
    assert [%Insight{id: id, version: version}] = :erpc.call(b, Coordinator, :insights, [name])
    assert {id, version} == {insight.id, insight.version}
    refute_receive {:coordinator_event, _, _, %{insight: _}}, 500
  end

  test "when the leader's node stops, the next one takes over the insight", ctx do
    %{a: a, b: b, name: name, peer_a: peer_a} = ctx

    # Port exhaustion, then connection errors, on a: produced by a.
    fds = alert("fd_usage_high", node: a, ago_ms: 20_000)
    errors_a = alert("connection_errors", node: a, ago_ms: 10_000)
    report_on(a, name, fds)
    report_on(a, name, errors_a)
    assert_receive {:coordinator_event, :insight_produced, _, %{insight: first, from: ^a}}, 5_000
    assert first.correlation_type == :causal
    wait_until(fn -> match?({:ok, %{received: 2}}, stats_on(b, name)) end)

    :ok = :peer.stop(peer_a)

    assert_receive {:coordinator_event, :leader_changed, _,
                    %{leader: ^b, previous: ^a, from: ^b}},
                   5_000

    # Connection errors on b as well: b updates the same insight (not a new
    # one, and not produced again), with a's alerts still in it.
    errors_b = alert("connection_errors", node: b)
    report_on(b, name, errors_b)
    assert_receive {:coordinator_event, :insight_updated, _, %{insight: updated, from: ^b}}, 5_000
    assert updated.id == first.id
    assert updated.version > first.version
    assert Enum.sort(updated.alert_ids) == Enum.sort([fds.id, errors_a.id, errors_b.id])
    assert updated.nodes == Enum.sort([a, b])
    assert updated.produced_by == b
    refute_receive {:coordinator_event, :insight_produced, _, _}, 200
  end

  test "an alert still alone when the leader stops is not lost", ctx do
    %{a: a, b: b, name: name, peer_a: peer_a} = ctx

    lonely = alert("connection_errors", node: a, ago_ms: 5_000)
    report_on(a, name, lonely)
    wait_until(fn -> match?({:ok, %{received: 1}}, stats_on(b, name)) end)
    refute_received {:coordinator_event, :insight_produced, _, _}

    :ok = :peer.stop(peer_a)
    assert_receive {:coordinator_event, :leader_changed, _, %{leader: ^b, from: ^b}}, 5_000

    later = alert("connection_errors", node: b)
    report_on(b, name, later)

    assert_receive {:coordinator_event, :insight_produced, _, %{insight: insight, from: ^b}},
                   5_000

    assert Enum.sort(insight.alert_ids) == Enum.sort([lonely.id, later.id])
    assert insight.nodes == Enum.sort([a, b])
  end

  test "a newcomer leads only after its warm-up, so that it knows the alerts in play", ctx do
    %{a: a, b: b, name: name} = ctx
    # Its name sorts before a's.
    {_peer, zero} = start_peer(:"coord_0_#{ctx.suffix}")
    started = System.monotonic_time(:millisecond)
    start_remote_coordinator(zero, Keyword.put(ctx.opts, :leader_warmup_ms, 2_000), self())

    # a and b hand the lead over to it only when its 2 s warm-up is over:
    # a lower bound on the time, which a slow machine cannot break (watching
    # that a still leads during the warm-up would race with it).
    for node <- [a, b] do
      assert_receive {:coordinator_event, :leader_changed, _,
                      %{leader: ^zero, previous: ^a, from: ^node}},
                     30_000

      assert System.monotonic_time(:millisecond) - started >= 2_000
    end

    wait_until(fn -> match?({:ok, %{members: 3, leader: ^zero}}, stats_on(zero, name)) end)
  end
end
