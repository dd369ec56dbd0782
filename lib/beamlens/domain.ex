defmodule Beamlens.Domain do
  @moduledoc """
  The behaviour of a watcher's domain: what to look at, how to judge it, and
  which read-only functions an investigation may call.

  A domain is a module with:

    * `c:name/0` and `c:description/0` - who it is, in one line for the model.
    * `c:snapshot/0` - a map of the domain's current state. It runs in a task
      of its own, off the watcher's process, and must be read-only and
      bounded: top-N lists, sampled scans, no message contents, no forced
      garbage collection, no `:sys.get_state/1`.
    * `c:metrics/1` - the numbers of a snapshot the anomaly gate judges (see
      `t:metric/0`).
    * `c:callbacks/0` - read-only functions that Lua investigations may call
      as `domain.function(args)`, each with its documentation and cost.
    * optionally `c:summarize/2` and `c:hypothesis/1` - the deterministic
      wording of alerts in rules-only mode.
    * optionally `c:stores/1` - the stores the domain reads (child specs),
      which BeamLens starts before its watchers, once however many watchers
      need them.

  `use Beamlens.Domain` declares the behaviour and provides default
  implementations of the optional callbacks.

  ## Example

      defmodule MyApp.QueueDomain do
        use Beamlens.Domain

        @impl true
        def name, do: :queue

        @impl true
        def description, do: "Job queue depth and throughput"

        @impl true
        def snapshot, do: %{depth: MyApp.Queue.depth(), processed: MyApp.Queue.processed_total()}

        @impl true
        def metrics(snapshot) do
          [
            %{name: "queue.depth", label: "queue depth", value: snapshot.depth,
              kind: :level, anomaly_type: "queue_backlog", unit: :count, min_abs: 100},
            %{name: "queue.processed", label: "jobs processed", value: snapshot.processed,
              kind: :counter, anomaly_type: "queue_throughput", unit: :per_second}
          ]
        end

        @impl true
        def callbacks do
          [%{name: "oldest_jobs", args: "(n)", doc: "The n oldest pending jobs (id, age_ms). Cheap.",
             fun: &MyApp.Queue.oldest/1}]
        end
      end
  """

  @typedoc """
  A number the gate judges.

    * `:name` - unique within the domain, e.g. `"ets.memory_bytes"`.
    * `:label` - human wording for summaries, e.g. `"ETS memory"`.
    * `:value` - the number.
    * `:kind` - `:limit` (hard thresholds `:warn`/`:critical`, no warm-up),
      `:level` (robust baseline after warm-up) or `:counter` (a monotonic
      counter, judged as a per-second rate against its baseline and against
      `:warn`/`:critical` when given; with `:window_ms`, over that window
      and only with at least `:min_count` events) or `:growth` (a level that
      can leak, judged on its floor over `:window_ms`).
    * `:anomaly_type` - the code-defined kind of problem when it fires.
    * `:unit` - `:bytes`, `:count`, `:ratio`, `:per_second`, `:ms` or
      `:decimal`, for formatting.
    * `:min_rel`, `:min_abs`, `:critical_rel`, `:sustain`, `:window_ms`,
      `:min_count` - see `Beamlens.Gate`.
    * `:entities` - `{type, id}` pairs the metric is about: the top
      contributors the snapshot measured (at most three), e.g.
      `{"ets_table", "sessions"}`, `{"process", "MyApp.Cache"}`,
      `{"pid", "#PID<0.123.0>"}`, `{"function", "MyApp.Worker.loop/1"}`,
      `{"module", "MyApp.Payments"}`. They become the entities of the alerts
      the metric leads to.
    * `:culprit` - the same contributors in words, e.g.
      `"ets table sessions owned by MyApp.Cache (#PID<0.123.0>)"`. Every
      alert about the metric names it in its summary (appended as
      `(culprit: ...)` when the summary does not already name it), whether
      the gate or the model wrote the summary.
  """
  @type metric :: %{
          required(:name) => String.t(),
          required(:label) => String.t(),
          required(:value) => number(),
          required(:kind) => :limit | :level | :counter | :growth,
          required(:anomaly_type) => String.t(),
          optional(:unit) => :bytes | :count | :ratio | :per_second | :ms | :decimal,
          optional(:warn) => number(),
          optional(:critical) => number(),
          optional(:min_rel) => number(),
          optional(:min_abs) => number(),
          optional(:critical_rel) => number(),
          optional(:sustain) => pos_integer(),
          optional(:window_ms) => pos_integer(),
          optional(:min_count) => number(),
          optional(:entities) => [{String.t(), String.t()}],
          optional(:culprit) => String.t()
        }

  @typedoc "A read-only function investigations may call from Lua as `<domain>.<name>(...)`."
  @type callback_spec :: %{
          name: String.t(),
          args: String.t(),
          doc: String.t(),
          fun: function()
        }

  @typedoc "What the gate reported for one metric (see `Beamlens.Gate`)."
  @type finding :: %{
          name: String.t(),
          severity: :warning | :critical,
          status: String.t(),
          value: float(),
          baseline: float() | nil,
          threshold: float(),
          z: float() | nil,
          samples: pos_integer(),
          count: float() | nil,
          window_ms: pos_integer() | nil
        }

  @callback name() :: atom()
  @callback description() :: String.t()
  @callback snapshot() :: map()
  @callback metrics(snapshot :: map()) :: [metric()]
  @callback callbacks() :: [callback_spec()]
  @callback summarize(finding(), metric()) :: String.t()
  @callback hypothesis(anomaly_type :: String.t()) :: String.t() | nil

  @doc """
  The stores the domain reads, as child specs (`Beamlens.LogStore`,
  `{MyApp.Store, opts}`, a map), given the options of the watcher that uses
  it. BeamLens starts them under its supervisor before its watchers; stores
  with the same child id start once. A store that is a named singleton
  (see `Beamlens.Store.start_once/2`) returns `:ignore` when the host, or
  another BeamLens instance, already runs it.
  """
  @callback stores(watcher_opts :: keyword()) :: [
              Supervisor.child_spec() | module() | {module(), term()}
            ]

  @optional_callbacks summarize: 2, hypothesis: 1, stores: 1

  defmacro __using__(_opts) do
    quote do
      @behaviour Beamlens.Domain

      @impl Beamlens.Domain
      def callbacks, do: []

      @impl Beamlens.Domain
      def summarize(finding, metric), do: Beamlens.Domain.default_summary(finding, metric)

      @impl Beamlens.Domain
      def hypothesis(_anomaly_type), do: nil

      defoverridable callbacks: 0, summarize: 2, hypothesis: 1
    end
  end

  @doc """
  The generic rules-only summary of a finding: the label, the value and the
  baseline or limit it crossed.

      iex> Beamlens.Domain.default_summary(
      ...>   %{value: 0.54, baseline: 0.12, threshold: 0.3, status: "new"},
      ...>   %{label: "ETS share of total memory", unit: :ratio})
      "ETS share of total memory at 54%, baseline 12%"

      iex> Beamlens.Domain.default_summary(
      ...>   %{value: 0.62, baseline: nil, threshold: 0.5, status: "new"},
      ...>   %{label: "atom table usage", unit: :ratio})
      "atom table usage at 62%, above the 50% limit"
  """
  @spec default_summary(map(), map()) :: String.t()
  def default_summary(finding, metric) do
    unit = Map.get(metric, :unit, :count)
    value = format(finding.value, unit)

    case finding.baseline do
      nil -> "#{metric.label} at #{value}, above the #{format(finding.threshold, unit)} limit"
      baseline -> "#{metric.label} at #{value}, baseline #{format(baseline, unit)}"
    end
  end

  @doc """
  Formats a number for a summary.

      iex> Beamlens.Domain.format(3_221_225_472, :bytes)
      "3.0 GiB"
      iex> Beamlens.Domain.format(0.123, :ratio)
      "12%"
      iex> Beamlens.Domain.format(12.345, :per_second)
      "12.3/s"
      iex> Beamlens.Domain.format(40_000.0, :count)
      "40000"
  """
  @spec format(number(), atom()) :: String.t()
  def format(value, :bytes) do
    value = value * 1.0

    cond do
      value >= 1024 ** 3 -> "#{Float.round(value / 1024 ** 3, 1)} GiB"
      value >= 1024 ** 2 -> "#{Float.round(value / 1024 ** 2, 1)} MiB"
      value >= 1024 -> "#{Float.round(value / 1024, 1)} KiB"
      true -> "#{round(value)} B"
    end
  end

  def format(value, :ratio), do: "#{round(value * 100)}%"
  def format(value, :per_second), do: "#{Float.round(value * 1.0, 1)}/s"
  def format(value, :ms), do: "#{round(value)} ms"
  def format(value, :decimal), do: "#{Float.round(value * 1.0, 2)}"
  def format(value, _count) when is_float(value), do: "#{round(value)}"
  def format(value, _count), do: "#{value}"

  @doc """
  Makes sure `summary` names the culprit: appends `" (culprit: ...)"`
  unless the summary already contains the culprit or the id of one of its
  naming entities (anything but `"resource"` and `"node"`).

      iex> Beamlens.Domain.with_culprit("ETS memory at 40%, baseline 5%",
      ...>   "ets table sessions owned by MyApp.Cache", [{"ets_table", "sessions"}])
      "ETS memory at 40%, baseline 5% (culprit: ets table sessions owned by MyApp.Cache)"

      iex> Beamlens.Domain.with_culprit("The sessions table keeps growing",
      ...>   "ets table sessions owned by MyApp.Cache", [{"ets_table", "sessions"}])
      "The sessions table keeps growing"

      iex> Beamlens.Domain.with_culprit("Memory grows", nil, [])
      "Memory grows"
  """
  @spec with_culprit(String.t(), String.t() | nil, [{String.t(), String.t()}]) :: String.t()
  def with_culprit(summary, culprit, entities)
  def with_culprit(summary, nil, _entities), do: summary
  def with_culprit(summary, "", _entities), do: summary

  def with_culprit(summary, culprit, entities) do
    names = for {type, id} <- entities, type not in ["resource", "node"], id != "", do: id

    if String.contains?(summary, culprit) or Enum.any?(names, &String.contains?(summary, &1)) do
      summary
    else
      "#{summary} (culprit: #{culprit})"
    end
  end

  @doc """
  The culprit of a metric in words: its `:culprit`, or else its naming
  entities (at most three), or `nil`.

      iex> Beamlens.Domain.culprit(%{entities: [{"resource", "memory"}, {"repo", "MyApp.Repo"}]})
      "repo MyApp.Repo"
      iex> Beamlens.Domain.culprit(%{entities: [{"resource", "memory"}]})
      nil
  """
  @spec culprit(map()) :: String.t() | nil
  def culprit(%{culprit: culprit}) when is_binary(culprit) and culprit != "", do: culprit

  def culprit(metric) do
    case for {type, id} <- Map.get(metric, :entities, []),
             type not in ["resource", "node"],
             is_binary(id) and id != "",
             do: "#{String.replace(type, "_", " ")} #{id}" do
      [] -> nil
      named -> named |> Enum.take(3) |> Enum.join(", ")
    end
  end

  @doc """
  Ranks the keys of recent events, newest first in `events`, by a
  recency-weighted count (each older event weighs 0.8 of the one after
  it), so that what happens now leads what happened most a while ago.
  Returns `{key, count}` pairs (plain counts), best first, at most `n`.

      iex> Beamlens.Domain.recent_leaders(~w(burst burst burst old old old old old old), 2)
      [{"burst", 3}, {"old", 6}]
  """
  @spec recent_leaders([term()], pos_integer()) :: [{term(), pos_integer()}]
  def recent_leaders(keys, n) do
    keys
    |> Enum.with_index()
    |> Enum.reduce(%{}, fn {key, i}, acc ->
      Map.update(acc, key, {:math.pow(0.8, i), 1}, fn {w, c} -> {w + :math.pow(0.8, i), c + 1} end)
    end)
    |> Enum.sort_by(fn {key, {weight, _}} -> {-weight, key} end)
    |> Enum.take(n)
    |> Enum.map(fn {key, {_, count}} -> {key, count} end)
  end

  @doc """
  A process in words: its registered name, or its current function, and
  its pid (from a map with `:pid`, `:name` and `:current_function`).

      iex> Beamlens.Domain.describe_process(%{pid: "#PID<0.1.0>", name: "MyApp.Cache"})
      "MyApp.Cache (#PID<0.1.0>)"
      iex> Beamlens.Domain.describe_process(%{pid: "#PID<0.1.0>", name: nil, current_function: "MyApp.Sink.loop/1"})
      "#PID<0.1.0> in MyApp.Sink.loop/1"
  """
  @spec describe_process(map()) :: String.t()
  def describe_process(%{pid: pid} = process) do
    case {process[:name], process[:current_function]} do
      {nil, nil} -> "#{pid}"
      {nil, function} -> "#{pid} in #{function}"
      {name, _} -> "#{name} (#{pid})"
    end
  end

  @doc """
  The entities of a process: its pid, its registered name when it has one,
  and its current function when it has none.
  """
  @spec process_entities(map()) :: [{String.t(), String.t()}]
  def process_entities(%{pid: pid} = process) do
    case {process[:name], process[:current_function]} do
      {nil, nil} -> [{"pid", pid}]
      {nil, function} -> [{"pid", pid}, {"function", function}]
      {name, _} -> [{"pid", pid}, {"process", name}]
    end
  end

  @doc """
  A group of processes (see `Beamlens.Domain.Processes.groups/2`) in words:
  how many, the function they run, and who spawned them.

      iex> Beamlens.Domain.describe_group(%{count: 2400, function: "MyApp.Job.run/1",
      ...>   parent: "#PID<0.9.0>", parent_name: "MyApp.Jobs", sample_name: nil})
      "2400 processes in MyApp.Job.run/1 spawned by MyApp.Jobs (#PID<0.9.0>)"
  """
  @spec describe_group(map()) :: String.t()
  def describe_group(group) do
    what =
      case group do
        %{count: 1, sample_name: name} when is_binary(name) -> "process #{name}"
        %{count: count, function: function} -> "#{count} processes in #{function}"
      end

    case group do
      %{parent: nil} -> what
      %{parent: parent, parent_name: nil} -> "#{what} spawned by #{parent}"
      %{parent: parent, parent_name: name} -> "#{what} spawned by #{name} (#{parent})"
    end
  end

  @doc "The entities of a group of processes: its function and its parent."
  @spec group_entities(map()) :: [{String.t(), String.t()}]
  def group_entities(group) do
    [{"function", group[:function]}, {"process", group[:parent_name]}, {"pid", group[:parent]}]
    |> Enum.reject(fn {_, id} -> is_nil(id) end)
  end

  @doc false
  # A readable id for a pid or port, without creating atoms.
  @spec id(pid() | port() | reference() | term()) :: String.t()
  def id(term) when is_pid(term) or is_port(term) or is_reference(term), do: inspect(term)
  def id(term) when is_atom(term), do: term |> Atom.to_string() |> String.trim_leading("Elixir.")
  def id(term) when is_binary(term), do: term
  def id(term), do: inspect(term, limit: 10, printable_limit: 100)
end
