defmodule Beamlens.Watcher.AgentTest do
  use ExUnit.Case, async: true

  alias Beamlens.Watcher.Agent

  @ctx %{
    anomaly_types: ["ets_memory_growth", "ets_table_count_high"],
    active_types: MapSet.new(["ets_memory_growth"]),
    reported_types: MapSet.new(),
    investigated?: true,
    found?: true,
    snapshot_ids: ["ets-3", "ets-2"],
    interval: 1_000
  }

  defp alert(type, extra \\ %{}) do
    args =
      Map.merge(
        %{
          "severity" => "warning",
          "anomaly_type" => type,
          "summary" => " The sessions table grows ",
          "observation" => "44 MiB"
        },
        extra
      )

    %{id: "c1", name: "fire_alert", arguments: args, error: nil}
  end

  test "a valid alert keeps only known snapshot ids and trims its text" do
    assert {:ok, {:fire_alert, attrs}} =
             Agent.validate(alert("ets_memory_growth", %{"snapshot_ids" => ["x", "ets-2"]}), @ctx)

    assert %{severity: :warning, summary: "The sessions table grows", snapshot_ids: ["ets-2"]} =
             attrs
  end

  test "alerts the gate's numbers contradict, repeats and unfounded 'other' alerts are refused" do
    assert {:error, text} = Agent.validate(alert("ets_table_count_high"), @ctx)
    assert text =~ "sees it within its baseline and limits now"
    assert text =~ "What the gate sees wrong now: ets_memory_growth."

    ctx = %{@ctx | reported_types: MapSet.new(["ets_memory_growth"])}

    assert {:error, "You already reported ets_memory_growth in this check." <> _} =
             Agent.validate(alert("ets_memory_growth"), ctx)

    # An unknown type is "other".
    assert {:ok, {:fire_alert, %{anomaly_type: "other"}}} =
             Agent.validate(alert("cache_stampede"), @ctx)

    assert {:error, "An alert of type other needs evidence" <> _} =
             Agent.validate(alert("other"), %{@ctx | investigated?: false})

    assert {:error, "The gate found nothing in this check" <> rest} =
             Agent.validate(alert("other"), %{@ctx | found?: false})

    assert rest =~ "call set_state with observing or warning"
  end

  test "Lua errors list the domain's functions" do
    error = %Beamlens.LuaError{kind: :runtime, message: "line 1: attempt to call a nil value"}
    {text, true} = Agent.lua_result({:error, error}, Beamlens.Domain.Ets)
    assert text =~ "The functions are: ets.tables(n, by), ets.table_info(name)."
  end

  test "tools are listed most useful first, without the omitted ones" do
    names = fn omit -> Enum.map(Agent.tools(["x"], 1_000, omit), & &1.name) end
    assert names.([]) == ~w(execute_lua fire_alert set_state done wait take_snapshot)
    assert names.(["take_snapshot", "execute_lua"]) == ~w(fire_alert set_state done wait)
  end
end
