defmodule Beamlens.Domain.Ecto.QueryGroups do
  @moduledoc """
  Slow and failed queries grouped by normalised SQL, as
  `Beamlens.Domain.Ecto.TelemetryStore` keeps them in its process: count,
  time, last error per group. At most `max_groups` groups; the least
  recently seen goes first. Pure: `add/2` takes a record and returns the
  new groups.

  SQL is normalised once per distinct text (`normalize_sql/2`; the last
  500 texts are remembered), since applications run the same few texts
  again and again.
  """

  alias Beamlens.{Redactor, Store}

  @max_cached 500

  defstruct groups: %{}, normalized: %{}, seq: 0, max_groups: 100, max_sql_bytes: 2_000

  @typedoc "The groups and the cache of normalised SQL."
  @type t :: %__MODULE__{
          groups: %{optional(non_neg_integer()) => map()},
          normalized: %{optional(non_neg_integer()) => {String.t(), String.t() | nil}},
          seq: non_neg_integer(),
          max_groups: pos_integer(),
          max_sql_bytes: pos_integer()
        }

  @typedoc """
  A slow or failed query as the handler sends it: raw SQL (or `nil`),
  source, times in microseconds, whether it was slow, the error
  (`%{exception: name | nil, message: text}`) or `nil`, and when (ms).
  """
  @type record :: %{
          sql: String.t() | nil,
          source: String.t() | nil,
          total_us: non_neg_integer(),
          slow: boolean(),
          error: %{exception: String.t() | nil, message: String.t()} | nil,
          at: integer()
        }

  @doc "No groups yet; keeps at most `max_groups` and SQL of at most `max_sql_bytes`."
  @spec new(pos_integer(), pos_integer()) :: t()
  def new(max_groups, max_sql_bytes),
    do: %__MODULE__{max_groups: max_groups, max_sql_bytes: max_sql_bytes}

  @doc """
  Counts a slow or failed query in its group (same normalised SQL and
  source), evicting the least recently seen group when a new one would
  pass the bound. The last error's message is redacted.
  """
  @spec add(t(), record()) :: t()
  def add(%__MODULE__{} = state, record) do
    {sql, state} = normalized(state, record.sql)
    key = :erlang.phash2({sql, record.source})

    group =
      Map.get(state.groups, key, %{
        sql: sql,
        source: record.source,
        slow: 0,
        errors: 0,
        slow_total_us: 0,
        max_total_us: 0,
        last_error: nil,
        first_seen: record.at,
        last_seen: record.at,
        seq: 0
      })

    seq = state.seq + 1

    group = %{
      group
      | last_seen: record.at,
        seq: seq,
        max_total_us: max(group.max_total_us, record.total_us)
    }

    group =
      if record.slow,
        do: %{group | slow: group.slow + 1, slow_total_us: group.slow_total_us + record.total_us},
        else: group

    group =
      if record.error,
        do: %{
          group
          | errors: group.errors + 1,
            last_error: %{record.error | message: Redactor.redact(record.error.message)}
        },
        else: group

    groups = Store.make_room(state.groups, key, state.max_groups, & &1.seq)
    %{state | groups: Map.put(groups, key, group), seq: seq}
  end

  @doc """
  The `n` groups with slow executions and the most total slow time
  (`:slow`), or with errors and the most errors (`:errors`), most recent
  first on ties, as the store's read functions return them.
  """
  @spec top(t(), :slow | :errors, non_neg_integer()) :: [map()]
  def top(%__MODULE__{groups: groups}, kind, n) do
    field = if kind == :slow, do: :slow, else: :errors
    order = if kind == :slow, do: :slow_total_us, else: :errors

    groups
    |> Map.values()
    |> Enum.filter(&(Map.fetch!(&1, field) > 0))
    |> Enum.sort_by(&{Map.fetch!(&1, order), &1.seq}, :desc)
    |> Enum.take(n)
    |> Enum.map(&present/1)
  end

  defp normalized(state, sql) do
    key = :erlang.phash2(sql)

    case state.normalized do
      %{^key => {^sql, normal}} ->
        {normal, state}

      cache ->
        normal = normalize_sql(sql, state.max_sql_bytes)
        cache = if map_size(cache) >= @max_cached, do: %{}, else: cache
        {normal, %{state | normalized: Map.put(cache, key, {sql, normal})}}
    end
  end

  defp present(group) do
    %{
      sql: group.sql,
      source: group.source,
      slow_count: group.slow,
      slow_avg_ms: if(group.slow > 0, do: ms(group.slow_total_us / group.slow)),
      max_ms: ms(group.max_total_us),
      errors: group.errors,
      last_error: group.last_error,
      first_seen: iso(group.first_seen),
      last_seen: iso(group.last_seen)
    }
  end

  defp ms(us), do: Float.round(us / 1_000, 2)
  defp iso(ms), do: ms |> DateTime.from_unix!(:millisecond) |> DateTime.to_iso8601()

  @doc """
  Normalises SQL for grouping and for the model: comments dropped, string,
  dollar-quoted and numeric literals replaced by `?`, lists of `?` collapsed,
  whitespace squeezed, capped at `max_bytes`, then redacted. Parameters
  (`$1`, `?`) and identifiers (`u0`, `"t1"`) are kept.

      iex> Beamlens.Domain.Ecto.QueryGroups.normalize_sql(
      ...>   "SELECT u0.\\"id\\" FROM \\"users\\" AS u0 -- lookup\\n" <>
      ...>     "WHERE u0.\\"email\\" = 'bob@example.com' AND u0.\\"age\\" > 21 AND u0.\\"id\\" IN (1, 2, 3) LIMIT $1"
      ...> )
      ~S|SELECT u0."id" FROM "users" AS u0 WHERE u0."email" = ? AND u0."age" > ? AND u0."id" IN (?...) LIMIT $1|
  """
  @spec normalize_sql(String.t() | nil, pos_integer()) :: String.t() | nil
  def normalize_sql(sql, max_bytes \\ 2_000)
  def normalize_sql(nil, _max_bytes), do: nil

  def normalize_sql(sql, max_bytes) do
    sql
    |> String.replace(
      ~r/(?:\b[EeBbXxNn])?'(?:[^']|'')*'|--[^\n]*|\/\*[\s\S]*?\*\/|\$([A-Za-z_]*)\$[\s\S]*?\$\1\$/,
      fn
        "--" <> _ -> " "
        "/*" <> _ -> " "
        _literal -> "?"
      end
    )
    |> String.replace(~r/(?<![\w$."])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b/, "?")
    |> String.replace(~r/\(\s*\?(?:\s*,\s*\?)+\s*\)/, "(?...)")
    |> String.replace(~r/\s+/, " ")
    |> String.trim()
    |> Redactor.redact()
    |> truncate(max_bytes)
  end

  defp truncate(text, max) when byte_size(text) <= max, do: text
  defp truncate(text, max), do: String.slice(text, 0, max) <> "..."
end
