defmodule Beamlens.Alert do
  @moduledoc """
  A structured alert fired by a watcher.

  Emitted as `[:beamlens, :watcher, :alert_fired]` with `%{alert: alert}` in
  the metadata, and sent to the coordinator for correlation.

  Fields:

    * `:id` - unique id of this alert (a string).
    * `:watcher` - the watcher's name (`:beam`, `:ets`, ... or a custom name).
    * `:node` - the node it was fired on.
    * `:severity` - `:info`, `:warning` or `:critical`.
    * `:state` - the watcher's state when it fired (`:observing`, `:warning`,
      `:critical`).
    * `:anomaly_type` - a code-defined kind such as `"ets_memory_growth"`;
      never free text from the model.
    * `:summary` - one sentence saying what is wrong.
    * `:observation` - facts that were measured.
    * `:hypothesis` - a possible explanation; speculation, kept apart from
      the facts.
    * `:evidence` - `%{snapshot_ids: [...], values: %{...}}`, the snapshots
      consulted and the values that matter.
    * `:entities` - things the alert is about, as `{type, id}` pairs of
      strings, for example `{"ets_table", "sessions"}`, `{"pid", "#PID<0.1.0>"}`,
      `{"module", "MyApp.Cache"}`. The coordinator groups alerts sharing one.
    * `:source` - `:gate` when the rules fired it, `:llm` when the model did.
    * `:detected_at` - when it was first detected (`DateTime`, UTC).
    * `:fingerprint` - computed from code fields only (watcher, anomaly type,
      node), so the same problem always has the same fingerprint whatever the
      model wrote. Repeats within the cooldown are folded into the open
      alert rather than fired again.
    * `:occurrences` - how many detections were folded into this alert.
    * `:escalations` - each time the severity of this problem rose while it
      was open: `%{at: DateTime.t(), severity: severity(), summary: String.t()}`,
      oldest first (kept by `Beamlens.alerts/1`).
    * `:last_seen_at` - when the latest detection folded into it was seen
      (`DateTime`, UTC; the detection time until a repeat is folded).
  """

  @type severity :: :info | :warning | :critical
  @type state :: :healthy | :observing | :warning | :critical

  @type t :: %__MODULE__{
          id: String.t(),
          watcher: atom(),
          node: node(),
          severity: severity(),
          state: state(),
          anomaly_type: String.t(),
          summary: String.t(),
          observation: String.t(),
          hypothesis: String.t() | nil,
          evidence: %{snapshot_ids: [String.t()], values: map()},
          entities: [{String.t(), String.t()}],
          source: :gate | :llm,
          detected_at: DateTime.t(),
          fingerprint: String.t(),
          occurrences: pos_integer(),
          escalations: [%{at: DateTime.t(), severity: severity(), summary: String.t()}],
          last_seen_at: DateTime.t() | nil
        }

  @enforce_keys [:watcher, :severity, :anomaly_type, :summary]
  defstruct [
    :id,
    :watcher,
    :severity,
    :anomaly_type,
    :summary,
    :detected_at,
    :fingerprint,
    :last_seen_at,
    node: nil,
    state: :warning,
    observation: "",
    hypothesis: nil,
    evidence: %{snapshot_ids: [], values: %{}},
    entities: [],
    source: :gate,
    occurrences: 1,
    escalations: []
  ]

  @severities [:info, :warning, :critical]

  @doc """
  Builds an alert, filling in `:id`, `:node`, `:detected_at` and
  `:fingerprint`. Its text (summary, observation, hypothesis, evidence and
  entities) is redacted with `Beamlens.Redactor`.

      iex> alert = Beamlens.Alert.new(watcher: :ets, severity: :warning,
      ...>   anomaly_type: "ets_memory_growth", summary: "ETS memory doubled")
      iex> alert.fingerprint == Beamlens.Alert.fingerprint(:ets, "ets_memory_growth", node())
      true
  """
  @spec new(keyword()) :: t()
  def new(fields) when is_list(fields) do
    alert = struct!(__MODULE__, fields)

    unless alert.severity in @severities do
      raise ArgumentError,
            "expected :severity to be one of #{inspect(@severities)}, got: #{inspect(alert.severity)}"
    end

    node = alert.node || node()
    detected_at = alert.detected_at || DateTime.utc_now()

    %{
      alert
      | summary: redact(alert.summary),
        observation: redact(alert.observation),
        hypothesis: redact(alert.hypothesis),
        evidence: Beamlens.Redactor.redact(alert.evidence),
        entities: Beamlens.Redactor.redact(alert.entities),
        id: alert.id || new_id(),
        node: node,
        detected_at: detected_at,
        last_seen_at: alert.last_seen_at || detected_at,
        fingerprint: fingerprint(alert.watcher, alert.anomaly_type, node)
    }
  end

  @doc """
  The fingerprint of an alert: a hash of the watcher, the anomaly type and
  the node. It never depends on text written by a model.
  """
  @spec fingerprint(atom(), String.t(), node()) :: String.t()
  def fingerprint(watcher, anomaly_type, node) do
    {watcher, anomaly_type, node}
    |> :erlang.term_to_binary()
    |> :erlang.md5()
    |> Base.encode16(case: :lower)
    |> binary_part(0, 16)
  end

  # Text in an alert goes to logs, telemetry handlers and other nodes:
  # it is redacted here, whoever built the alert.
  defp redact(nil), do: nil
  defp redact(text) when is_binary(text), do: Beamlens.Redactor.redact(text)
  defp redact(other), do: Beamlens.Redactor.redact_text(other)

  defp new_id do
    Base.encode32(:rand.bytes(10), case: :lower, padding: false)
  end
end
