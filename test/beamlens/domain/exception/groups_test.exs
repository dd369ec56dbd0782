defmodule Beamlens.Domain.Exception.GroupsTest do
  # Pure: time is passed in, nothing waits.
  use ExUnit.Case, async: true

  alias Beamlens.Domain.Exception.{Fingerprint, Groups}

  @t0 1_700_000_000_000

  defmodule Billing do
    def charge, do: :ok
  end

  defp entry(reason, opts \\ []) do
    stacktrace = [{Billing, :charge, 0, [file: ~c"lib/billing.ex", line: 3]}]

    Keyword.get(opts, :kind, :error)
    |> Fingerprint.event(reason, stacktrace)
    |> Map.merge(%{
      source: :tower,
      pid: Keyword.get(opts, :pid),
      terminal: Keyword.get(opts, :terminal, false),
      at: Keyword.get(opts, :at, @t0)
    })
  end

  defp record(groups, entry, now) do
    {groups, counted} = Groups.record(groups, entry, now)
    {groups, counted}
  end

  test "events of the same problem share a group; the group names the app module" do
    groups = Groups.new(@t0, 10, 0)

    {groups, [:recorded, :groups_created, :new_groups]} =
      record(groups, entry(%RuntimeError{message: "order 1"}), @t0)

    {groups, [:recorded]} = record(groups, entry(%RuntimeError{message: "order 2"}), @t0 + 1)

    {groups, [:recorded, :groups_created, :new_groups]} =
      record(groups, entry(%KeyError{key: :id}), @t0 + 2)

    assert [
             %{exception: "RuntimeError", count: 2, module: module, new: true},
             %{exception: "KeyError", count: 1}
           ] = Groups.top(groups, 5, @t0 + 3)

    assert module == "Beamlens.Domain.Exception.GroupsTest.Billing"
    assert [%{exception: "KeyError"}, %{exception: "RuntimeError"}] = Groups.recent(groups, 2)
    assert [%{exception: "KeyError"}] = Groups.search(groups, "keyerr", 5, @t0)

    assert %{
             examples: [_, _],
             frames: ["Beamlens.Domain.Exception.GroupsTest.Billing.charge/0 (lib/billing.ex:3)"]
           } = Groups.group(groups, hd(Groups.top(groups, 1, @t0)).id, @t0)

    assert Groups.group(groups, "nope", @t0) == nil
  end

  test "two reports of one process's termination within 5 s count once" do
    pid = spawn(fn -> :ok end)
    crash = entry(%RuntimeError{message: "boom"}, pid: pid, terminal: true)
    groups = Groups.new(@t0, 10, 0)

    {groups, [:recorded | _]} = record(groups, crash, @t0)
    {groups, [:duplicates]} = record(groups, crash, @t0 + 4_999)
    {groups, [:recorded]} = record(groups, crash, @t0 + 10_000)

    # Reports that are not terminations (rescued and reported) all count.
    rescued = %{crash | terminal: false}
    {groups, [:recorded]} = record(groups, rescued, @t0 + 10_001)
    assert [%{count: 3}] = Groups.top(groups, 5, @t0)
  end

  test "a group is new only after the grace period, for five minutes, and only once" do
    groups = Groups.new(@t0, 10, 60_000)

    {groups, [:recorded, :groups_created]} =
      record(groups, entry(%RuntimeError{message: "at boot"}), @t0 + 1_000)

    assert Groups.new_groups(groups, 5, @t0 + 1_000) == []

    later = @t0 + 61_000

    {groups, [:recorded, :groups_created, :new_groups]} =
      record(groups, entry(%KeyError{key: :id}), later)

    assert [%{exception: "KeyError", new: true}] = Groups.new_groups(groups, 5, later)
    assert %{new_groups_recent: 1, groups: 2} = Groups.stats(groups, later)
    assert Groups.new_groups(groups, 5, later + 300_000) == []
  end

  test "at most max_groups groups, the least recently seen evicted; an evicted group is not new again" do
    groups =
      Enum.reduce(Enum.with_index([:one, :two, :three]), Groups.new(@t0, 2, 0), fn {v, i},
                                                                                   groups ->
        elem(record(groups, entry(v, kind: :throw), @t0 + i), 0)
      end)

    assert groups |> Groups.top(5, @t0) |> Enum.map(& &1.message) |> Enum.sort() ==
             ["throw: :three", "throw: :two"]

    # :one comes back: a known group, created again but not new.
    {groups, [:recorded, :groups_created]} = record(groups, entry(:one, kind: :throw), @t0 + 4)
    assert map_size(groups.groups) == 2
  end

  test "rates over the last minute and 15 minutes count exceptions, not messages" do
    groups = Groups.new(@t0, 10, 0)
    {groups, _} = record(groups, entry(%RuntimeError{message: "a"}), @t0)
    {groups, [:messages | _]} = record(groups, entry("a log line", kind: :message), @t0)
    {groups, _} = record(groups, entry(%RuntimeError{message: "a"}), @t0 + 120_000)

    assert %{last_minute: 1, last_5_minutes: 2, last_15_minutes: 2} =
             Groups.stats(groups, @t0 + 120_000)

    assert %{last_minute: 0, last_15_minutes: 0} = Groups.stats(groups, @t0 + 1_200_000)
  end

  test "the recent events are bounded" do
    groups =
      Enum.reduce(1..80, Groups.new(@t0, 10, 0), fn i, groups ->
        elem(record(groups, entry(%RuntimeError{message: "n #{i}"}), @t0 + i), 0)
      end)

    assert length(Groups.recent(groups, 100)) == 50
  end
end
