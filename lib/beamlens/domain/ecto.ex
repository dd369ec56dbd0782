defmodule Beamlens.Domain.Ecto do
  @use_options [
    repo: [type: :module, required: true, doc: "Your Ecto repo module (required)."],
    name: [
      type: :module,
      default: :ecto,
      expected: "an atom",
      doc: "The domain's name, which prefixes its Lua functions; change it to watch two repos."
    ]
  ]

  @moduledoc """
  The Ecto domain: query rate, latency percentiles, pool pressure, error
  rate and slow queries of one repo, with PostgreSQL diagnostics when
  `EctoPSQLExtras` is installed.

  Define a domain module for your repo:

      defmodule MyApp.EctoDomain do
        use Beamlens.Domain.Ecto, repo: MyApp.Repo
      end

  and start the registry and the repo's telemetry store before BeamLens:

      children = [
        MyApp.Repo,
        {Registry, keys: :unique, name: Beamlens.Domain.Ecto.Registry},
        {Beamlens.Domain.Ecto.TelemetryStore, repo: MyApp.Repo},
        {Beamlens, watchers: [:beam, [name: :ecto, domain_module: MyApp.EctoDomain]]}
      ]

  `use` options:

  #{Beamlens.Schema.docs(@use_options)}

  Every callback of `Beamlens.Domain` is overridable.

  ## What the gate judges

  Over the store's rolling window (see `Beamlens.Domain.Ecto.TelemetryStore`):

    * `slow_queries` - p95 query time against its baseline (at least
      20 ms above), and the rate of slow queries against its baseline;
    * `pool_saturation` - p95 time waiting for a pool connection above
      50 ms (critical above 500 ms), and the average wait against its
      baseline;
    * `query_error_rate` - the share of failing queries above 5% (critical
      above 25%), and the error rate against its baseline;
    * `request_latency` - p95 of the total time callers wait (queue, query
      and decode) against its baseline (at least 50 ms above).

  Latency metrics are judged only when the window holds at least 5
  queries, the error share from 20.

  ## Privacy and cost

  SQL is normalised (literals replaced by `?`) and redacted before it is
  stored; query parameters are never read. Snapshots read shared counters
  (no database access). The `EctoPSQLExtras` functions run one query each
  on the database, through the repo, with `log: false` and a 900 ms
  timeout, and return at most 20 rows.
  """

  alias Beamlens.Domain
  alias Beamlens.Domain.Ecto.TelemetryStore
  alias Beamlens.Redactor

  @psql_functions [
    locks:
      "Locks held and awaited: relation, mode, granted, age, query (normalised, redacted). One query on the database.",
    blocking:
      "Queries waiting for a lock and the queries holding it: blocked_pid, blocked_statement, " <>
        "blocked_duration, blocking_pid, blocking_statement, blocking_duration (statements " <>
        "normalised, redacted). One query on the database.",
    long_running_queries:
      "Queries running longer than 500 ms: pid, duration, query (normalised, redacted). One query on the database.",
    cache_hit:
      "Buffer cache hit ratios of indexes and tables (healthy: above 0.99). One query on the database.",
    index_usage:
      "Per table: how often an index is used rather than a sequential scan, and rows. One query on the database.",
    bloat:
      "Tables and indexes with the most dead-row bloat (wasted space). One query on the database.",
    connections:
      "Database connections by user, client address and state. One query on the database."
  ]
  @psql_names Keyword.keys(@psql_functions)
  # The EctoPSQLExtras module of each diagnostic, run directly: its
  # top-level functions first probe the database twice (pg_stat_statements
  # and sslinfo versions) without our timeout or tag.
  @psql_modules %{
    locks: EctoPSQLExtras.Locks,
    blocking: EctoPSQLExtras.Blocking,
    long_running_queries: EctoPSQLExtras.LongRunningQueries,
    cache_hit: EctoPSQLExtras.CacheHit,
    index_usage: EctoPSQLExtras.IndexUsage,
    bloat: EctoPSQLExtras.Bloat,
    connections: EctoPSQLExtras.Connections
  }
  @max_rows 20

  defmacro __using__(opts) do
    opts =
      if Keyword.keyword?(opts),
        do: Keyword.replace_lazy(opts, :repo, &Macro.expand(&1, __CALLER__)),
        else: opts

    opts =
      Beamlens.Schema.validate!(opts, @use_options,
        context: " for use Beamlens.Domain.Ecto",
        not_keyword:
          "use Beamlens.Domain.Ecto expects options such as repo: MyApp.Repo, got: %{value}",
        invalid:
          "the %{key} option of use Beamlens.Domain.Ecto must be %{expected}, got: %{value}",
        missing:
          "use Beamlens.Domain.Ecto needs the :repo option naming your Ecto repo module, " <>
            "e.g. use Beamlens.Domain.Ecto, repo: MyApp.Repo"
      )

    repo = opts[:repo]
    name = opts[:name]

    quote do
      use Beamlens.Domain

      @doc false
      def __beamlens_repo__, do: unquote(repo)

      @impl Beamlens.Domain
      def name, do: unquote(name)

      @impl Beamlens.Domain
      def description, do: Beamlens.Domain.Ecto.description(unquote(repo))

      @impl Beamlens.Domain
      def snapshot, do: Beamlens.Domain.Ecto.snapshot(unquote(repo))

      @impl Beamlens.Domain
      def metrics(snapshot), do: Beamlens.Domain.Ecto.metrics(snapshot)

      @impl Beamlens.Domain
      def callbacks, do: Beamlens.Domain.Ecto.callbacks(unquote(repo))

      @impl Beamlens.Domain
      def summarize(finding, metric), do: Beamlens.Domain.Ecto.summarize(finding, metric)

      @impl Beamlens.Domain
      def hypothesis(anomaly_type), do: Beamlens.Domain.Ecto.hypothesis(anomaly_type)

      defoverridable name: 0,
                     description: 0,
                     snapshot: 0,
                     metrics: 1,
                     callbacks: 0,
                     summarize: 2,
                     hypothesis: 1
    end
  end

  @doc false
  @spec description(module()) :: String.t()
  def description(repo) do
    "Database (Ecto repo #{Domain.id(repo)}): query rate, latency percentiles, pool queue time " <>
      "(pool pressure), error rate, slow queries grouped by normalised SQL" <>
      if(psql_extras?(), do: ", PostgreSQL diagnostics.", else: ".")
  end

  @doc false
  @spec snapshot(module()) :: map()
  def snapshot(repo) do
    store = store!(repo)
    window = TelemetryStore.window(store)
    totals = TelemetryStore.totals(store)

    window
    |> stats(store)
    |> Map.merge(%{
      repo: Domain.id(repo),
      queries_total: totals.queries,
      errors_total: totals.errors,
      slow_total: totals.slow,
      dropped_total: totals.dropped,
      slowest:
        store
        |> TelemetryStore.slow_queries(3)
        |> Enum.map(&Map.update!(&1, :sql, fn sql -> sql && String.slice(sql, 0, 300) end))
    })
  end

  defp stats(window, store) do
    seconds = window.window_ms / 1_000

    %{
      window_s: Float.round(seconds, 1),
      queries: window.queries,
      queries_per_s: Float.round(window.queries / seconds, 2),
      errors: window.errors,
      error_share:
        if(window.queries > 0, do: Float.round(window.errors / window.queries, 3), else: 0.0),
      slow: window.slow,
      slow_query_ms: store.slow_query_ms,
      query_ms: window.query_ms,
      queue_ms: window.queue_ms,
      total_ms: window.total_ms,
      decode_avg_ms: window.decode_avg_ms,
      waited_10ms_share: window.waited_10ms_share,
      waited_100ms_share: window.waited_100ms_share,
      pool_size: store.pool_size
    }
  end

  @doc false
  @spec metrics(map()) :: [Domain.metric()]
  def metrics(s) do
    repo = [{"repo", s.repo}]

    tables =
      s.slowest
      |> Enum.map(& &1.source)
      |> Enum.reject(&is_nil/1)
      |> Enum.uniq()
      |> Enum.take(3)
      |> Enum.map(&{"db_table", &1})

    counters = [
      %{
        name: "ecto.slow_queries",
        label: "slow query rate",
        value: s.slow_total,
        kind: :counter,
        window_ms: 10_000,
        min_count: 5,
        unit: :per_second,
        anomaly_type: "slow_queries",
        min_rel: 1.0,
        min_abs: 0.1,
        sustain: 1,
        entities: repo ++ tables
      },
      %{
        name: "ecto.errors",
        label: "query error rate",
        value: s.errors_total,
        kind: :counter,
        window_ms: 10_000,
        min_count: 5,
        unit: :per_second,
        anomaly_type: "query_error_rate",
        min_rel: 2.0,
        min_abs: 0.2,
        sustain: 1,
        entities: repo
      }
    ]

    latency =
      if s.queries >= 5 do
        [
          level(
            "ecto.query_p95_ms",
            "p95 query time",
            s.query_ms.p95,
            "slow_queries",
            20,
            1.0,
            repo ++ tables
          ),
          %{
            name: "ecto.queue_p95_ms",
            label: "p95 wait for a pool connection",
            value: s.queue_ms.p95,
            kind: :limit,
            unit: :ms,
            anomaly_type: "pool_saturation",
            warn: 50,
            critical: 500,
            sustain: 2,
            entities: repo
          },
          level(
            "ecto.queue_avg_ms",
            "average wait for a pool connection",
            s.queue_ms.avg,
            "pool_saturation",
            10,
            2.0,
            repo
          ),
          level(
            "ecto.total_p95_ms",
            "p95 time callers wait for a query",
            s.total_ms.p95,
            "request_latency",
            50,
            1.0,
            repo
          )
        ]
      else
        []
      end

    share =
      if s.queries >= 20 do
        [
          %{
            name: "ecto.error_share",
            label: "share of failing queries",
            value: s.error_share,
            kind: :limit,
            unit: :ratio,
            anomaly_type: "query_error_rate",
            warn: 0.05,
            critical: 0.25,
            sustain: 1,
            entities: repo
          }
        ]
      else
        []
      end

    Enum.filter(counters ++ latency ++ share, &is_number(&1.value))
  end

  defp level(name, label, value, type, min_abs, min_rel, entities) do
    %{
      name: name,
      label: label,
      value: value,
      kind: :level,
      unit: :ms,
      anomaly_type: type,
      min_abs: min_abs,
      min_rel: min_rel,
      sustain: 2,
      entities: entities
    }
  end

  @doc false
  @spec summarize(Domain.finding(), Domain.metric()) :: String.t()
  def summarize(finding, metric) do
    tables = for {"db_table", table} <- Map.get(metric, :entities, []), do: table

    suffix = if tables == [], do: "", else: " (slowest tables: #{Enum.join(tables, ", ")})"
    Domain.default_summary(finding, metric) <> suffix
  end

  @doc false
  @spec hypothesis(String.t()) :: String.t() | nil
  def hypothesis("slow_queries"),
    do:
      "Queries got slower: a missing index or a plan change, table growth or bloat, lock " <>
        "contention, or a database under load; the slowest query groups point at where."

  def hypothesis("pool_saturation"),
    do:
      "Every pool connection is busy, so queries queue for one: long transactions or slow " <>
        "queries hold connections, or the load outgrew the pool size."

  def hypothesis("query_error_rate"),
    do:
      "Queries fail: the database is unreachable or refusing connections, timeouts, or " <>
        "constraint violations from new code; the failing query groups and their errors say which."

  def hypothesis("request_latency"),
    do: "Callers wait longer for their queries, from queueing for a connection or slower queries."

  def hypothesis(_), do: nil

  @doc false
  @spec callbacks(module()) :: [Domain.callback_spec()]
  def callbacks(repo) do
    base = [
      %{
        name: "stats",
        args: "()",
        doc:
          "Statistics over the rolling window: queries, queries_per_s, errors, error_share, slow, " <>
            "query_ms/queue_ms/total_ms (p50, p95, p99, max, avg), waited_10ms_share, pool_size. Cheap.",
        fun: fn -> repo |> store!() |> then(&stats(TelemetryStore.window(&1), &1)) end
      },
      %{
        name: "slow_queries",
        args: "(n)",
        doc:
          "The n (max 50) groups of slow queries with the most total time: normalised SQL (literals " <>
            "replaced by ?), source table, slow_count, slow_avg_ms, max_ms, errors, last_seen. Cheap.",
        fun: fn n -> repo |> store!() |> TelemetryStore.slow_queries(cap(n, 50)) end
      },
      %{
        name: "errors",
        args: "(n)",
        doc:
          "The n (max 50) groups of failing queries with the most errors: SQL, source, errors, " <>
            "last_error (exception, message). Cheap.",
        fun: fn n -> repo |> store!() |> TelemetryStore.errors(cap(n, 50)) end
      },
      %{
        name: "pool",
        args: "()",
        doc:
          "Pool pressure: time queries waited for a connection (queue_ms p50/p95/p99/max/avg), the share " <>
            "that waited 10 ms and 100 ms or more, queries_per_s, pool_size. Cheap.",
        fun: fn -> pool(repo) end
      },
      %{
        name: "sources",
        args: "(n)",
        doc:
          "The n (max 50) sources (tables) with the most total query time since start: queries, " <>
            "total_ms, avg_ms, errors. Cheap.",
        fun: fn n -> repo |> store!() |> TelemetryStore.sources(cap(n, 50)) end
      }
    ]

    if psql_extras?() do
      base ++
        Enum.map(@psql_functions, fn {name, doc} ->
          %{name: Atom.to_string(name), args: "()", doc: doc, fun: fn -> psql(repo, name) end}
        end)
    else
      base
    end
  end

  defp pool(repo) do
    store = store!(repo)
    window = TelemetryStore.window(store)
    seconds = window.window_ms / 1_000

    %{
      queue_ms: window.queue_ms,
      waited_10ms_share: window.waited_10ms_share,
      waited_100ms_share: window.waited_100ms_share,
      queries_per_s: Float.round(window.queries / seconds, 2),
      pool_size: store.pool_size
    }
  end

  @doc false
  # Runs one EctoPSQLExtras diagnostic through the repo (its SQL with its
  # default arguments, one query) and returns at most 20 rows as maps,
  # query text normalised and everything redacted.
  @spec psql(module(), atom()) :: [map()]
  def psql(repo, name) when name in @psql_names do
    module = Map.fetch!(@psql_modules, name)

    unless Code.ensure_loaded?(module) do
      raise ArgumentError, "EctoPSQLExtras is not installed (no #{inspect(module)})"
    end

    sql = module.query(Map.get(module.info(), :default_args, []))

    result = repo.query!(sql, [], log: false, timeout: 900, telemetry_options: [beamlens: true])

    columns = Enum.map(result.columns || [], &to_string/1)

    result.rows
    |> Enum.take(@max_rows)
    |> Enum.map(fn row ->
      columns
      |> Enum.zip(row)
      |> Map.new(fn {column, value} -> {column, cell(column, value)} end)
    end)
  end

  # SQL text (EctoPSQLExtras calls it query, query_snippet or *_statement)
  # is normalised: its literals may be user data.
  defp cell(column, value) when is_binary(value) do
    if String.contains?(column, "query") or String.contains?(column, "statement"),
      do: TelemetryStore.normalize_sql(value, 500),
      else: value |> Redactor.redact() |> String.slice(0, 500)
  end

  defp cell(_column, value) when is_number(value) or is_boolean(value) or is_nil(value), do: value

  defp cell(_column, %_{} = value) do
    if String.Chars.impl_for(value),
      do: to_string(value),
      else: inspect(value, limit: 10, printable_limit: 200)
  end

  defp cell(_column, value), do: Redactor.redact(inspect(value, limit: 10, printable_limit: 200))

  # Asked each time (the model's prompt is built per request, seconds
  # apart): a library loaded later is picked up.
  defp psql_extras?, do: Code.ensure_loaded?(EctoPSQLExtras)

  defp store!(repo) do
    case TelemetryStore.lookup(repo) do
      {:ok, store} -> store
      {:error, message} -> raise message
    end
  end

  defp cap(n, max) when is_number(n), do: n |> trunc() |> max(1) |> min(max)
  defp cap(n, _max), do: raise(ArgumentError, "n must be a number, got: #{inspect(n)}")
end
