defmodule Beamlens.Insight do
  @moduledoc """
  An explanation of several related alerts, produced by `Beamlens.Coordinator`.

  Emitted as `[:beamlens, :coordinator, :insight_produced]` the first time,
  and as `[:beamlens, :coordinator, :insight_updated]` when more alerts join
  it later, with `%{insight: insight}` in the metadata both times. An updated
  insight keeps its `:id` and has a higher `:version`.

  Fields:

    * `:id` - a stable id. Every coordinator of a cluster gives the same
      alerts the same id.
    * `:version` - grows whenever the insight changes: an alert joins, the
      severity rises, or the correlation becomes stronger. Computed from the
      content, so versions agree across nodes.
    * `:correlation_type` - the strongest relation in the group:
      `:causal` (the causal table has a directed relation and the order in
      time fits), `:symptomatic` (the alerts share an entity or a resource,
      or the same symptom fired on several nodes) or `:temporal` (different
      watchers on one node within the correlation window).
    * `:summary` - what happened: which rules matched, for which alerts.
    * `:root_cause_hypothesis` - the likely cause and where to look first.
    * `:summary_source` - `:rules` when the text is the deterministic one,
      `:summarizer` when a summarizer (an LLM) wrote it.
    * `:confidence` - 0.0 to 1.0; higher for causal relations and for more
      supporting alerts.
    * `:root_cause` - for causal insights, the alert the causal table puts
      first: `%{alert_id, fingerprint, anomaly_type, watcher, node, entity,
      rule}`; `nil` otherwise.
    * `:rules` - every matched rule: `%{kind, rule, anomaly_types, nodes,
      alert_ids, lag_ms, shared, text}`.
    * `:alert_ids`, `:alert_count` - the alerts (ids of the first and latest
      alerts of each fingerprint, at most 200) and how many were folded in.
    * `:fingerprints`, `:anomaly_types`, `:watchers`, `:nodes` - what the
      alerts are, who fired them and where.
    * `:severity` - of the most severe alert.
    * `:merged_ids` - ids of insights that were merged into this one when a
      new alert related two groups.
    * `:created_at`, `:updated_at` - detection times (UTC) of the alert that
      made the group an insight and of the latest alert in it.
    * `:produced_by` - the node whose coordinator emitted it.
  """

  alias Beamlens.Alert

  @type correlation_type :: :temporal | :causal | :symptomatic

  @type rule :: %{
          kind: correlation_type(),
          rule: String.t(),
          anomaly_types: [String.t()],
          nodes: [node() | String.t()],
          alert_ids: [String.t()],
          lag_ms: integer() | nil,
          shared: String.t() | nil,
          text: String.t()
        }

  @type root_cause :: %{
          alert_id: String.t(),
          fingerprint: String.t(),
          anomaly_type: String.t(),
          watcher: atom() | String.t(),
          node: node() | String.t(),
          entity: String.t() | nil,
          rule: String.t()
        }

  @type t :: %__MODULE__{
          id: String.t(),
          version: pos_integer(),
          correlation_type: correlation_type(),
          summary: String.t(),
          root_cause_hypothesis: String.t(),
          summary_source: :rules | :summarizer,
          confidence: float(),
          root_cause: root_cause() | nil,
          rules: [rule()],
          alert_ids: [String.t()],
          alert_count: pos_integer(),
          fingerprints: [String.t()],
          anomaly_types: [String.t()],
          watchers: [atom() | String.t()],
          nodes: [node() | String.t()],
          severity: Alert.severity(),
          merged_ids: [String.t()],
          created_at: DateTime.t(),
          updated_at: DateTime.t(),
          produced_by: node()
        }

  defstruct [
    :id,
    :version,
    :correlation_type,
    :summary,
    :root_cause_hypothesis,
    :confidence,
    :root_cause,
    :severity,
    :created_at,
    :updated_at,
    :produced_by,
    summary_source: :rules,
    rules: [],
    alert_ids: [],
    alert_count: 0,
    fingerprints: [],
    anomaly_types: [],
    watchers: [],
    nodes: [],
    merged_ids: []
  ]

  @doc false
  # Builds an insight from the map the correlation engine reports. Node and
  # watcher names become the atoms they were (they exist: they came in on
  # alerts); nothing from the engine creates an atom.
  @spec from_native(map()) :: t()
  def from_native(%{} = map) do
    %__MODULE__{
      id: map["id"],
      version: map["version"],
      correlation_type: kind(map["correlation_type"]),
      summary: redact(map["summary"]),
      root_cause_hypothesis: redact(map["root_cause_hypothesis"]),
      confidence: map["confidence"] * 1.0,
      root_cause: root_cause(map["root_cause"]),
      rules: Enum.map(map["rules"], &rule/1),
      alert_ids: map["alert_ids"],
      alert_count: map["alert_count"],
      fingerprints: map["fingerprints"],
      anomaly_types: map["anomaly_types"],
      watchers: Enum.map(map["watchers"], &existing_atom/1),
      nodes: Enum.map(map["nodes"], &existing_atom/1),
      severity: severity(map["severity"]),
      merged_ids: map["merged_ids"],
      created_at: DateTime.from_unix!(map["created_at_ms"], :millisecond),
      updated_at: DateTime.from_unix!(map["updated_at_ms"], :millisecond),
      produced_by: node()
    }
  end

  defp rule(map) do
    %{
      kind: kind(map["kind"]),
      rule: map["rule"],
      anomaly_types: map["anomaly_types"],
      nodes: Enum.map(map["nodes"], &existing_atom/1),
      alert_ids: map["alert_ids"],
      lag_ms: map["lag_ms"],
      shared: redact(map["shared"]),
      text: redact(map["text"])
    }
  end

  defp root_cause(nil), do: nil

  defp root_cause(map) do
    %{
      alert_id: map["alert_id"],
      fingerprint: map["fingerprint"],
      anomaly_type: map["anomaly_type"],
      watcher: existing_atom(map["watcher"]),
      node: existing_atom(map["node"]),
      entity: redact(map["entity"]),
      rule: map["rule"]
    }
  end

  # Insight text is built from alert entities and goes to logs and
  # telemetry: redacted like alert text.
  defp redact(text) when is_binary(text), do: Beamlens.Redactor.redact(text)
  defp redact(other), do: other

  defp kind("causal"), do: :causal
  defp kind("symptomatic"), do: :symptomatic
  defp kind("temporal"), do: :temporal

  defp severity("critical"), do: :critical
  defp severity("warning"), do: :warning
  defp severity("info"), do: :info

  defp existing_atom(text) when is_binary(text) do
    String.to_existing_atom(text)
  rescue
    ArgumentError -> text
  end
end
