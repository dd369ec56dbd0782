defmodule Beamlens.Domain.Exception do
  @moduledoc """
  The `:exception` domain: how often the application raises, which groups
  of similar exceptions dominate, which ones are new, and their examples
  and stack traces.

  Exceptions come from `Beamlens.Domain.Exception.ExceptionStore`: from
  [Tower](https://hex.pm/packages/tower) when it is configured with the
  store as a reporter,

      config :tower, reporters: [Beamlens.Domain.Exception.ExceptionStore]

  and otherwise from the crash reports the application logs. BeamLens
  starts the store when this watcher runs:

      {Beamlens, watchers: [:beam, :exception]}

  Anomaly types: `exception_burst` (the rate of exceptions against its
  baseline, or above 1 per second; critical above 10 per second) and
  `new_exception_group` (a kind of exception never seen since start-up
  appeared in the last five minutes; critical from five).

  Messages are redacted (`Beamlens.Redactor`) and stack trace arguments are
  reduced to their shapes before they are stored.
  """

  use Beamlens.Domain

  alias Beamlens.Domain.Exception.ExceptionStore

  @impl true
  def name, do: :exception

  @impl true
  def description do
    "Exceptions: rate, groups of similar exceptions (kind, exception, message, top frames), " <>
      "new groups, recent examples and stack traces."
  end

  @impl true
  def stores(_watcher_opts), do: [Beamlens.LogStore, Beamlens.Domain.Exception.ExceptionStore]

  @impl true
  def snapshot do
    unless ExceptionStore.running?() do
      raise "the exception store is not running (BeamLens starts it with the :exception watcher)"
    end

    stats =
      case ExceptionStore.stats() do
        %{recorded: _} = stats -> stats
        _ -> raise "the exception store did not answer within 5 s"
      end

    %{
      exceptions_total: stats.recorded,
      messages_total: stats.messages,
      dropped_total: stats.dropped,
      last_minute: stats.last_minute,
      last_5_minutes: stats.last_5_minutes,
      groups: stats.groups,
      new_groups_recent: stats.new_groups_recent,
      top_groups: ExceptionStore.top_groups(5),
      recent_top_group: recent_top_group(),
      new_groups: ExceptionStore.new_groups(3),
      recent: ExceptionStore.recent(5)
    }
  end

  @impl true
  def metrics(s) do
    [
      %{
        name: "exception.count",
        label: "exception rate",
        value: s.exceptions_total + s.dropped_total,
        kind: :counter,
        window_ms: 10_000,
        min_count: 5,
        unit: :per_second,
        anomaly_type: "exception_burst",
        min_rel: 2.0,
        min_abs: 0.2,
        warn: 1,
        critical: 10,
        sustain: 1,
        # The group raised most among the latest exceptions (weighted by
        # recency) leads: the culprit of a burst is what raises now, not
        # what raised most.
        entities: entities(Map.get(s, :recent_top_group, []) ++ s.top_groups)
      },
      %{
        name: "exception.new_groups",
        label: "new kinds of exception",
        value: s.new_groups_recent,
        kind: :limit,
        unit: :count,
        anomaly_type: "new_exception_group",
        warn: 1,
        critical: 5,
        sustain: 1,
        entities: entities(s.new_groups)
      }
    ]
  end

  @recent_window 25

  defp recent_top_group do
    case @recent_window
         |> ExceptionStore.recent()
         |> Enum.map(& &1.group)
         |> Beamlens.Domain.recent_leaders(1) do
      [{id, _count}] when is_binary(id) ->
        case ExceptionStore.group(id) do
          %{} = group -> [Map.take(group, [:exception, :module])]
          _ -> []
        end

      _ ->
        []
    end
  end

  # The exception modules and the application modules where they were
  # raised, for the coordinator to relate to other alerts.
  defp entities(groups) do
    groups
    |> Enum.take(3)
    |> Enum.flat_map(fn group ->
      Enum.reject(
        [{"exception", group.exception}, {"module", group.module}],
        &(elem(&1, 1) == nil)
      )
    end)
    |> Enum.uniq()
  end

  @impl true
  def summarize(finding, %{name: "exception.new_groups"} = metric) do
    named =
      case Map.get(metric, :entities, []) |> Enum.filter(&(elem(&1, 0) == "exception")) do
        [] -> ""
        list -> " (#{Enum.map_join(list, ", ", &elem(&1, 1))})"
      end

    "#{Beamlens.Domain.format(finding.value, :count)} new kind(s) of exception in the last 5 minutes#{named}"
  end

  def summarize(finding, metric) do
    top =
      case Map.get(metric, :entities, []) |> Enum.filter(&(elem(&1, 0) == "exception")) do
        [] -> ""
        [{_, exception} | _] -> ", mostly #{exception}"
      end

    Beamlens.Domain.default_summary(finding, metric) <> top
  end

  @impl true
  def hypothesis("exception_burst"),
    do:
      "A code path started failing repeatedly, often after a deploy or because a dependency " <>
        "(database, external API) fails; the top group and its stack trace point at where."

  def hypothesis("new_exception_group"),
    do:
      "A failure mode not seen before appeared: new code, new input, or a new dependency failure."

  def hypothesis(_), do: nil

  @impl true
  def callbacks do
    [
      %{
        name: "top_groups",
        args: "(n)",
        doc:
          "The n (max 50) groups of similar exceptions with the most events: id, kind, exception, " <>
            "message (redacted), count, first_seen, last_seen, new, top_frame. Cheap.",
        fun: fn n -> ExceptionStore.top_groups(cap(n, 50)) end
      },
      %{
        name: "new_groups",
        args: "(n)",
        doc: "The n (max 50) groups first seen in the last 5 minutes (after start-up). Cheap.",
        fun: fn n -> ExceptionStore.new_groups(cap(n, 50)) end
      },
      %{
        name: "recent",
        args: "(n)",
        doc:
          "The n (max 50) most recent exceptions, newest first: time, group id, kind, exception, message.",
        fun: fn n -> ExceptionStore.recent(cap(n, 50)) end
      },
      %{
        name: "group",
        args: "(id)",
        doc:
          "One group by id, with its top frames and up to 3 recent examples with their stack traces " <>
            "(arguments shown as shapes only). nil if unknown.",
        fun: &group/1
      },
      %{
        name: "search",
        args: "(text, n)",
        doc:
          "Up to n (max 50) groups whose exception or message contains text (case-insensitive, plain text).",
        fun: &search/2
      },
      %{
        name: "stats",
        args: "()",
        doc:
          "Counts since start (recorded, messages, dropped, duplicates, groups_created, new_groups), " <>
            "events in the last 1, 5 and 15 minutes, current groups.",
        fun: &ExceptionStore.stats/0
      }
    ]
  end

  @doc false
  @spec group(String.t()) :: map() | nil
  def group(id) when is_binary(id), do: ExceptionStore.group(id)
  def group(id), do: raise(ArgumentError, "id must be a string, got: #{inspect(id)}")

  @doc false
  @spec search(String.t(), number()) :: [map()]
  def search(text, n) when is_binary(text), do: ExceptionStore.search(text, cap(n, 50))
  def search(text, _n), do: raise(ArgumentError, "text must be a string, got: #{inspect(text)}")

  defp cap(n, max) when is_number(n), do: n |> trunc() |> max(1) |> min(max)
  defp cap(n, _max), do: raise(ArgumentError, "n must be a number, got: #{inspect(n)}")
end
