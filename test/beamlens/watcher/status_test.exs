defmodule Beamlens.Watcher.StatusTest do
  # Wake policy and state floor of a watcher, with the clock passed in.
  use ExUnit.Case, async: true

  alias Beamlens.Watcher.Status

  defmodule Domain do
    @moduledoc false
    def summarize(finding, metric), do: "#{metric.label} at #{finding.value}"
  end

  defp watcher(fields \\ []) do
    Map.merge(
      %{
        llm: :configured,
        opts: [llm: :gated, heartbeat: 60_000],
        tick: 10,
        status: :healthy,
        status_reason: "started",
        model_status: nil,
        check_requested: false,
        llm_paused_until: 0,
        sleep_until: 0,
        last_wake_tick: 10,
        last_wake_at: 1_000,
        firing: %{},
        pending: [],
        metrics: %{},
        domain: Domain
      },
      Map.new(fields)
    )
  end

  @groups %{"ets_memory_growth" => [%{name: "ets.memory"}]}

  describe "wake_reason/3" do
    test "never without a provider, nor while the budget is spent" do
      assert Status.wake_reason(watcher(llm: nil), @groups, 0) == nil
      assert Status.wake_reason(watcher(llm_paused_until: 500), @groups, 499) == nil
      assert Status.wake_reason(watcher(llm_paused_until: 500), @groups, 500) == "gate findings"
    end

    test "check_now/2 first, then new findings, then :always mode" do
      assert Status.wake_reason(watcher(check_requested: true), @groups, 0) == "check requested"
      assert Status.wake_reason(watcher(), @groups, 0) == "gate findings"

      assert Status.wake_reason(watcher(opts: [llm: :always, heartbeat: :infinity]), %{}, 0) ==
               "continuous check"
    end

    test "routine follow-ups every 5 ticks while not healthy, unless the model asked to wait" do
      w = watcher(status: :warning, last_wake_tick: 6)
      assert Status.wake_reason(w, %{}, 2_000) == nil
      assert Status.wake_reason(%{w | tick: 11}, %{}, 2_000) == "state is warning"
      assert Status.wake_reason(%{w | tick: 11, sleep_until: 3_000}, %{}, 2_000) == nil

      observing = watcher(model_status: :observing, last_wake_tick: nil)
      assert Status.wake_reason(observing, %{}, 2_000) == "state is healthy"
    end

    test "the heartbeat, measured from the last wake-up" do
      assert Status.wake_reason(watcher(), %{}, 60_999) == nil
      assert Status.wake_reason(watcher(), %{}, 61_000) == "heartbeat"
      never = watcher(opts: [llm: :gated, heartbeat: :infinity])
      assert Status.wake_reason(never, %{}, 10_000_000) == nil
    end
  end

  test "paused?/2 with a time, forever, or not at all" do
    refute Status.paused?(%{paused_until: nil}, 5)
    assert Status.paused?(%{paused_until: :infinity}, 5)
    assert Status.paused?(%{paused_until: 10}, 9)
    refute Status.paused?(%{paused_until: 10}, 10)
  end

  describe "resolve/2: the gate's floor" do
    @critical %{name: "m.a", severity: :critical, value: 9}
    @warning %{name: "m.b", severity: :warning, value: 3}
    @metrics %{"m.a" => %{label: "A"}, "m.b" => %{label: "B"}}

    test "the gate alone: firing severity, then pending, then healthy" do
      w = watcher(firing: %{"m.a" => @critical, "m.b" => @warning}, metrics: @metrics)
      assert Status.resolve(w) == {:critical, "A at 9"}
      assert Status.resolve(%{w | firing: %{"m.b" => @warning}}) == {:warning, "B at 3"}
      assert Status.resolve(watcher(pending: ["m.a", "m.b"])) == {:observing, "watching m.a, m.b"}

      assert Status.resolve(watcher()) ==
               {:healthy, "all metrics within their baselines and limits"}
    end

    test "the model may raise the state, not lower it below what fires" do
      w = watcher(firing: %{"m.b" => @warning}, metrics: @metrics)

      assert Status.resolve(%{w | model_status: :critical}, "model says so") ==
               {:critical, "model says so"}

      assert Status.resolve(%{w | model_status: :healthy}, "all fine") == {:warning, "B at 3"}
      assert Status.resolve(%{w | model_status: :warning}) == {:warning, "started"}
    end
  end

  test "summarize/3 falls back to the default summary when the domain raises" do
    finding = %{name: "m.x", value: 1, baseline: nil, threshold: 2, severity: :warning}
    assert Status.summarize(__MODULE__, finding, nil) == "m.x at 1, above the 2 limit"
    assert Status.summarize(Domain, finding, %{label: "X"}) == "X at 1"
  end
end
