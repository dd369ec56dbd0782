defmodule Beamlens.Domain.Ecto.QueryGroupsTest do
  use ExUnit.Case, async: true

  alias Beamlens.Domain.Ecto.QueryGroups

  doctest QueryGroups

  defp record(sql, opts \\ []) do
    %{
      sql: sql,
      source: Keyword.get(opts, :source, "users"),
      total_us: Keyword.get(opts, :total_us, 150_000),
      slow: Keyword.get(opts, :slow, true),
      error: Keyword.get(opts, :error),
      at: Keyword.get(opts, :at, 1_700_000_000_000)
    }
  end

  test "groups slow queries by normalised SQL and source" do
    groups =
      QueryGroups.new(10, 2_000)
      |> QueryGroups.add(record("SELECT * FROM users WHERE id = 1", total_us: 100_000))
      |> QueryGroups.add(record("SELECT * FROM users WHERE id = 2", total_us: 300_000))
      |> QueryGroups.add(record("SELECT * FROM users WHERE id = 3", source: "admins"))

    assert [
             %{
               sql: "SELECT * FROM users WHERE id = ?",
               source: "users",
               slow_count: 2,
               slow_avg_ms: 200.0,
               max_ms: 300.0,
               errors: 0
             },
             %{source: "admins", slow_count: 1}
           ] = QueryGroups.top(groups, :slow, 10)

    assert QueryGroups.top(groups, :errors, 10) == []
  end

  test "failed queries keep their count and last error, redacted" do
    error = %{exception: "Postgrex.Error", message: "duplicate key for alice@example.com"}

    groups =
      QueryGroups.new(10, 2_000)
      |> QueryGroups.add(record("INSERT INTO users VALUES ('x')", slow: false, error: error))
      |> QueryGroups.add(record("INSERT INTO users VALUES ('y')", slow: false, error: error))

    assert [%{errors: 2, slow_count: 0, slow_avg_ms: nil, last_error: last}] =
             QueryGroups.top(groups, :errors, 5)

    assert last.exception == "Postgrex.Error"
    refute last.message =~ "alice@example.com"
    assert QueryGroups.top(groups, :slow, 5) == []
  end

  test "keeps at most max_groups groups, evicting the least recently seen" do
    groups =
      Enum.reduce(1..5, QueryGroups.new(3, 2_000), fn i, groups ->
        QueryGroups.add(groups, record("SELECT * FROM t#{i}", source: "t#{i}", at: i))
      end)

    # t3 seen again: t4 is now the least recently seen.
    groups = QueryGroups.add(groups, record("SELECT * FROM t3", source: "t3", at: 6))
    groups = QueryGroups.add(groups, record("SELECT * FROM t6", source: "t6", at: 7))

    assert groups |> QueryGroups.top(:slow, 10) |> Enum.map(& &1.source) |> Enum.sort() ==
             ["t3", "t5", "t6"]
  end

  test "the cache of normalised SQL is bounded" do
    groups =
      Enum.reduce(1..1_200, QueryGroups.new(2, 2_000), fn i, groups ->
        QueryGroups.add(groups, record("SELECT #{i} FROM \"t#{rem(i, 700)}\""))
      end)

    assert map_size(groups.normalized) <= 500
    assert map_size(groups.groups) <= 2
  end

  test "normalised SQL is capped" do
    long = "SELECT " <> Enum.map_join(1..500, ", ", &"column_#{&1}") <> " FROM t"
    assert String.length(QueryGroups.normalize_sql(long, 100)) == 103
    assert QueryGroups.normalize_sql(nil) == nil
  end
end
