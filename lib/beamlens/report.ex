defmodule Beamlens.Report do
  @moduledoc """
  The answer of `Beamlens.investigate/2`, and the text of `Beamlens.report/1`.

  Fields:

    * `:question` - what was asked, or `nil` for a general look.
    * `:node`, `:started_at`, `:duration_ms` - where, when and how long.
    * `:model_used` - whether a model took part; when not,
      `:no_model_reason` says why ("no provider configured", "token budget
      spent", "provider unavailable: ...").
    * `:domains` - per watcher: `%{watcher, state, key_figures, watching}`,
      the watcher's state, the main numbers of a fresh snapshot
      (`%{label => formatted value}`; counters as their total, since a
      rate needs two samples) and the metrics its gate sees anomalous but
      has not alerted on (not yet sustained, or quiet after a recent alert).
    * `:findings` - what the anomaly gates found: `%{watcher, anomaly_type,
      severity, summary, evidence, entities}`. Facts measured, never
      written by the model.
    * `:alerts` - the `Beamlens.Alert`s the findings (and the model, with
      `source: :llm`) amount to. They are fired only with `fire_alerts: true`.
    * `:summary`, `:hypothesis` - the model's answer and its guess at the
      cause, kept apart from the facts; `nil` without a model.
    * `:tokens` - `%{input, output, estimated}` used by this investigation.
    * `:outcome` - how the model part ended (`:answered`, `:iteration_cap`,
      `:token_cap`, `:timeout`, `:no_model`, `{:llm_error, reason}`).
  """

  @type finding :: %{
          watcher: atom(),
          anomaly_type: String.t(),
          severity: atom(),
          summary: String.t(),
          evidence: map(),
          entities: [{String.t(), String.t()}]
        }

  @type t :: %__MODULE__{
          question: String.t() | nil,
          node: node(),
          started_at: DateTime.t(),
          duration_ms: non_neg_integer(),
          model_used: boolean(),
          no_model_reason: String.t() | nil,
          domains: [
            %{
              watcher: atom(),
              state: atom(),
              key_figures: %{String.t() => term()},
              watching: [String.t()]
            }
          ],
          findings: [finding()],
          alerts: [Beamlens.Alert.t()],
          summary: String.t() | nil,
          hypothesis: String.t() | nil,
          tokens: %{input: non_neg_integer(), output: non_neg_integer(), estimated: boolean()},
          outcome: term()
        }

  defstruct [
    :question,
    :node,
    :started_at,
    :summary,
    :hypothesis,
    :no_model_reason,
    duration_ms: 0,
    model_used: false,
    domains: [],
    findings: [],
    alerts: [],
    tokens: %{input: 0, output: 0, estimated: false},
    outcome: :no_model
  ]

  @max_figures 4
  @max_findings 8
  @width 100

  @doc """
  The report as text for a terminal: facts first (states, key figures,
  findings), then the model's answer, marked as such.
  """
  @spec to_text(t()) :: String.t()
  def to_text(%__MODULE__{} = r) do
    header = [
      "BeamLens investigation on #{r.node} at #{time(r.started_at)} (#{r.duration_ms} ms)",
      "Question: #{r.question || "(general health check)"}"
    ]

    domains =
      Enum.map(r.domains, fn d ->
        figures =
          case Enum.take(d.key_figures, @max_figures) do
            [] -> "(no fresh snapshot)"
            list -> Enum.map_join(list, ", ", fn {k, v} -> "#{k} #{v}" end)
          end

        line("  #{pad(d.watcher, 10)} #{pad(d.state, 9)} #{figures}")
      end)

    watching =
      case Enum.flat_map(r.domains, fn d ->
             Enum.map(Map.get(d, :watching, []), &"#{d.watcher}: #{&1}")
           end) do
        [] -> []
        list -> [line("Anomalous, not yet alerted: #{Enum.join(list, "; ")}")]
      end

    findings =
      case r.findings do
        [] ->
          ["Findings: none (every metric within its baseline and limits)"]

        list ->
          ["Findings (measured):"] ++
            (list
             |> Enum.take(@max_findings)
             |> Enum.map(fn f ->
               entities =
                 case f.entities do
                   [] ->
                     ""

                   es ->
                     " [" <>
                       Enum.map_join(Enum.take(es, 3), ", ", fn {t, id} -> "#{t} #{id}" end) <>
                       "]"
                 end

               line("  #{f.severity} #{f.watcher}/#{f.anomaly_type}: #{f.summary}#{entities}")
             end)) ++ more(length(list) - @max_findings, "finding")
      end

    alerts =
      case r.alerts do
        [] ->
          []

        list ->
          [
            "Alerts it would raise: #{length(list)} (#{Enum.map_join(list, ", ", & &1.anomaly_type)})"
          ]
      end

    model =
      if r.model_used do
        [
          "Model's answer (interpretation, not measured):",
          wrap("Summary: #{r.summary || "(none given)"}"),
          wrap("Hypothesis: #{r.hypothesis || "(none given)"}"),
          "Tokens: #{r.tokens.input} in, #{r.tokens.output} out#{if r.tokens.estimated, do: " (estimated)", else: ""}"
        ]
      else
        ["No model was used (#{r.no_model_reason}); the findings above are the gate's."]
      end

    Enum.join(header ++ ["Domains:"] ++ domains ++ watching ++ findings ++ alerts ++ model, "\n") <>
      "\n"
  end

  @doc """
  The map of `Beamlens.status/1` as text: one line per watcher, then the
  coordinator and its latest insight (`insights`, newest first), providers,
  budget and the latest alerts (`recent`, newest first, at most 5 shown).
  """
  @spec format_status(map(), [Beamlens.Alert.t()], [Beamlens.Insight.t()]) :: String.t()
  def format_status(status, recent \\ [], insights \\ []) do
    header = "BeamLens on #{status.node} at #{time(DateTime.utc_now())}"

    watchers =
      Enum.map(status.watchers, fn w ->
        mode =
          cond do
            w.paused ->
              "PAUSED" <> if(w.paused_until, do: " until #{time(w.paused_until)}", else: "")

            w.mode == :model ->
              "model"

            true ->
              "rules-only"
          end

        tokens = w.tokens.last_hour.input + w.tokens.last_hour.output
        est = if w.tokens.estimated, do: "~", else: ""

        line(
          "  #{pad(w.name, 10)} #{pad(w.state, 9)} #{pad(mode, 11)} alerts #{pad(w.alerts_fired, 3)} tok/h #{est}#{pad(tokens, 7)} #{w.reason}"
        )
      end)

    reasons =
      status.watchers
      |> Enum.map(& &1.mode_reason)
      |> Enum.reject(&is_nil/1)
      |> Enum.uniq()
      |> Enum.map(&"  rules-only: #{&1}")

    coordinator =
      case status.coordinator do
        nil ->
          []

        c ->
          [
            "Coordinator: #{if c.leader?, do: "leader", else: "follower"}, #{c.insights} insight(s)"
          ]
      end

    providers =
      case status.providers do
        [] ->
          ["Model: none (rules only)"]

        list ->
          [
            "Model: " <>
              Enum.map_join(list, " -> ", fn p ->
                "#{p.provider} #{p.model} (breaker #{p.breaker})"
              end) <>
              "; budget #{status.budget.used_this_hour}/#{status.budget.limit} tokens this hour" <>
              investigation_tokens(status)
          ]
      end

    alerts =
      case recent do
        [] ->
          ["Recent alerts: none"]

        list ->
          ["Recent alerts (newest first):"] ++
            Enum.map(Enum.take(list, 5), fn a ->
              repeats = if a.occurrences > 1, do: " x#{a.occurrences}", else: ""

              line(
                "  #{time(a.detected_at)} #{a.severity} #{a.watcher}/#{a.anomaly_type}#{repeats}: #{a.summary}"
              )
            end) ++ more(length(list) - 5, "alert")
      end

    insight =
      case insights do
        [] ->
          []

        [latest | _] ->
          [
            line(
              "Latest insight (#{latest.correlation_type}, #{latest.alert_count} alerts, " <>
                "#{Enum.join(latest.watchers, ", ")}): #{latest.summary}"
            )
          ]
      end

    Enum.join(
      [header, "Watchers:"] ++
        watchers ++ reasons ++ coordinator ++ insight ++ providers ++ alerts,
      "\n"
    ) <> "\n"
  end

  defp investigation_tokens(%{investigations: %{tokens: %{last_hour: %{input: i, output: o}}}})
       when i + o > 0,
       do: " (investigations #{i + o})"

  defp investigation_tokens(_status), do: ""

  defp more(n, what) when n > 0, do: ["  ... and #{n} more #{what}(s)"]
  defp more(_, _), do: []

  defp time(nil), do: "-"
  defp time(%DateTime{} = at), do: Calendar.strftime(at, "%H:%M:%S")

  defp pad(term, n), do: String.pad_trailing(to_string(term), n)

  defp line(text) do
    if String.length(text) > @width, do: String.slice(text, 0, @width - 3) <> "...", else: text
  end

  # Indented by 2, continuation lines by 4, at most 6 lines; a word longer
  # than a line is cut.
  defp wrap(text) do
    width = @width - 4

    text
    |> String.split(~r/\s+/, trim: true)
    |> Enum.map(&String.slice(&1, 0, width))
    |> Enum.reduce([""], fn word, [current | done] ->
      if current != "" and String.length(current) + String.length(word) + 1 > width,
        do: [word | [current | done]],
        else: [String.trim_leading(current <> " " <> word) | done]
    end)
    |> Enum.reverse()
    |> Enum.take(6)
    |> Enum.join("\n    ")
    |> then(&("  " <> &1))
  end
end
