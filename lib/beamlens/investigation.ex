defmodule Beamlens.Investigation do
  @moduledoc """
  An investigation on demand: `Beamlens.investigate/2`.

  It runs in a task of the instance's task supervisor, never in a watcher
  or in the caller (who waits in `receive`), and at most one runs per node
  at a time: the task registers the name `Beamlens.Investigation`, so a
  second one gets a `:busy` error at once.

  Steps:

    1. Each chosen watcher is asked (a `GenServer.call`) for what its own
       gate sees now: its state, the findings firing with their baselines,
       the metrics pending. The watcher's gate is not fed: its baselines
       and hysteresis are not disturbed.
    2. Each chosen domain takes a fresh snapshot, in tasks bounded by the
       timeout (at most 10 s). Its metrics give the key figures, and a
       fresh gate (no baseline, one sample) judges the hard limits
       (`:limit` metrics) on it, so a limit crossed since the watcher's
       last tick is found too.
    3. The findings of both, grouped per watcher and anomaly type, make
       the alerts it would raise (`source: :gate`).
    4. With a model, and budget left: one bounded agent loop with the
       question, the findings, the key figures and the snapshots (as data),
       the `execute_lua` and `fire_alert` tools of the watchers (with every
       chosen domain's callbacks in the sandbox) and an `answer` tool. It
       ends when the model answers, or at `:max_iterations`, `:max_tokens`
       or the timeout. If the first request fails, the report says no model
       was used and why.
    5. Only with `fire_alerts: true` are the alerts delivered, each through
       its watcher (so repeats fold into open alerts as usual).

  Step 4's conversation is a pure state machine,
  `Beamlens.Investigation.Loop`; this module runs the task, the snapshots
  and the gate, and carries out the loop's effects (model requests, Lua
  runs, alerts), awaiting each at most until the deadline.

  Emits the span `[:beamlens, :investigation, :start | :stop | :exception]`
  (see `Beamlens.Telemetry`).
  """

  alias Beamlens.{Alert, Domain, Error, Gate, LLM, Lua, Report, Telemetry}
  alias Beamlens.Investigation.Loop
  alias Beamlens.Watcher.{Alerts, Status}

  @lock __MODULE__
  @max_snapshot_ms 10_000
  @max_figures 6
  @caller :investigation

  @doc false
  @spec run(atom(), String.t() | nil, keyword()) :: {:ok, Report.t()} | {:error, Exception.t()}
  def run(instance, question, opts) do
    with :ok <- check_question(question),
         {:ok, opts} <- Beamlens.Investigation.Options.validate(opts),
         :ok <- not_in_watcher(instance),
         {:ok, watchers} <- chosen(instance, opts[:watchers]) do
      start(instance, question, watchers, opts)
    end
  end

  defp check_question(nil), do: :ok
  defp check_question(q) when is_binary(q) and byte_size(q) <= 2_000, do: :ok

  defp check_question(q) do
    {:error,
     %Error{
       kind: :bad_argument,
       message:
         "expected the question to be a string of at most 2000 bytes or nil, got: #{inspect(q, limit: 5, printable_limit: 80)}"
     }}
  end

  # A watcher waiting for its own investigation would never answer it.
  defp not_in_watcher(instance) do
    case Registry.keys(Module.concat(instance, Registry), self()) do
      [{:watcher, name} | _] ->
        {:error,
         %Error{
           kind: :bad_argument,
           message: "investigate/2 cannot run inside the watcher #{inspect(name)}"
         }}

      _ ->
        :ok
    end
  rescue
    ArgumentError -> :ok
  end

  defp chosen(instance, names) do
    running =
      instance
      |> Module.concat(Registry)
      |> Registry.select([{{{:watcher, :"$1"}, :"$2", :_}, [], [{{:"$1", :"$2"}}]}])
      |> Enum.sort()

    case names do
      nil ->
        if running == [],
          do:
            {:error,
             %Error{kind: :not_found, message: "no watcher of #{inspect(instance)} is running"}},
          else: {:ok, running}

      names ->
        case Enum.reject(names, &List.keymember?(running, &1, 0)) do
          [] ->
            {:ok, Enum.filter(running, fn {name, _} -> name in names end)}

          missing ->
            {:error,
             %Error{
               kind: :not_found,
               message:
                 "no running watcher named #{Enum.map_join(missing, ", ", &inspect/1)}; running: " <>
                   Enum.map_join(running, ", ", &inspect(elem(&1, 0)))
             }}
        end
    end
  rescue
    ArgumentError ->
      {:error,
       %Error{kind: :not_found, message: "BeamLens instance #{inspect(instance)} is not running"}}
  end

  defp start(instance, question, watchers, opts) do
    task_sup = Module.concat(instance, TaskSupervisor)

    task =
      Task.Supervisor.async_nolink(task_sup, fn ->
        try do
          Process.register(self(), @lock)
        rescue
          ArgumentError ->
            {:error,
             %Error{
               kind: :busy,
               message:
                 "an investigation is already running on #{node()}; try again when it is over"
             }}
        else
          true ->
            metadata = %{question: question, watchers: Enum.map(watchers, &elem(&1, 0))}

            try do
              Telemetry.span([:investigation], metadata, fn ->
                report = investigate(instance, question, watchers, opts)

                {{:ok, report},
                 %{input_tokens: report.tokens.input, output_tokens: report.tokens.output},
                 Map.merge(metadata, %{
                   model_used: report.model_used,
                   outcome: report.outcome,
                   findings: length(report.findings)
                 })}
              end)
            after
              # Free the lock before replying, not when the task exits: the
              # caller may start the next investigation at once.
              Process.unregister(@lock)
            end
        end
      end)

    case Task.yield(task, opts[:timeout] + 5_000) || Task.shutdown(task, :brutal_kill) do
      {:ok, result} ->
        result

      {:exit, reason} ->
        {:error,
         %Error{
           kind: :internal,
           message: "the investigation failed: #{inspect(reason, limit: 5)}"
         }}

      nil ->
        {:error,
         %Error{
           kind: :timeout,
           message: "the investigation took longer than #{opts[:timeout]} ms"
         }}
    end
  catch
    :exit, reason ->
      {:error,
       %Error{
         kind: :internal,
         message: "could not start the investigation: #{inspect(reason, limit: 5)}"
       }}
  end

  ## The investigation (in its own task)

  defp investigate(instance, question, watchers, opts) do
    started_at = DateTime.utc_now()
    t0 = System.monotonic_time(:millisecond)
    deadline = t0 + opts[:timeout]
    task_sup = Module.concat(instance, TaskSupervisor)

    views = Enum.flat_map(watchers, fn {name, pid} -> view(name, pid) end)
    snapshots = snapshots(task_sup, views, deadline)

    domains =
      Enum.map(views, fn v ->
        snapshot = snapshots[v.name]
        metrics = fresh_metrics(v.domain, snapshot)
        Map.merge(v, %{snapshot: snapshot, fresh: metrics})
      end)

    findings = Enum.flat_map(domains, &findings/1)
    alerts = gate_alerts(domains, findings)

    report = %Report{
      question: question,
      node: node(),
      started_at: started_at,
      domains:
        Enum.map(
          domains,
          &%{
            watcher: &1.name,
            state: &1.status,
            key_figures: key_figures(&1),
            watching: watching(&1)
          }
        ),
      findings: findings,
      alerts: alerts
    }

    report =
      case model_config(instance) do
        {:ok, config} ->
          model(report, config, domains, deadline, opts)

        {:no_model, reason} ->
          %{report | model_used: false, no_model_reason: reason, outcome: :no_model}
      end

    if opts[:fire_alerts], do: fire(report.alerts, watchers)

    %{report | duration_ms: System.monotonic_time(:millisecond) - t0}
  end

  defp view(name, pid) do
    view = GenServer.call(pid, :gate_view, 5_000)
    [Map.put(view, :name, name)]
  catch
    :exit, _ -> []
  end

  defp snapshots(task_sup, views, deadline) do
    timeout = max(min(deadline - System.monotonic_time(:millisecond), @max_snapshot_ms), 0)

    tasks =
      Enum.map(views, fn v ->
        domain = v.domain

        {v.name,
         Task.Supervisor.async_nolink(task_sup, fn ->
           try do
             {:ok, domain.snapshot()}
           rescue
             e -> {:error, Exception.message(e)}
           end
         end)}
      end)

    results = Task.yield_many(Enum.map(tasks, &elem(&1, 1)), timeout)

    tasks
    |> Enum.zip(results)
    |> Map.new(fn {{name, _}, {task, result}} ->
      result = result || Task.shutdown(task, :brutal_kill)

      case result do
        {:ok, {:ok, snapshot}} -> {name, snapshot}
        _ -> {name, nil}
      end
    end)
  end

  defp fresh_metrics(_domain, nil), do: []

  defp fresh_metrics(domain, snapshot) do
    domain.metrics(snapshot)
  rescue
    _ -> []
  end

  # The watcher's own findings (baseline-aware), plus the hard limits a
  # fresh gate finds on the fresh snapshot for metrics the watcher does
  # not already see firing.
  defp findings(d) do
    own =
      Enum.map(d.firing, fn f ->
        metric = d.metrics[f.name] || %{label: f.name, anomaly_type: "unknown"}
        finding(d, f, metric, "watcher gate", d.snapshot_id)
      end)

    firing = MapSet.new(d.firing, & &1.name)

    limits =
      d.fresh
      |> Enum.filter(&(&1.kind == :limit and not MapSet.member?(firing, &1.name)))
      |> Enum.map(&Map.put(&1, :sustain, 1))

    fresh =
      with [_ | _] <- limits,
           {:ok, gate} <- Gate.new(warmup: 1),
           {:ok, verdict} <- Gate.observe(gate, limits, 0) do
        by_name = Map.new(limits, &{&1.name, &1})
        Enum.map(verdict.findings, &finding(d, &1, by_name[&1.name], "fresh snapshot", nil))
      else
        _ -> []
      end

    own ++ fresh
  end

  defp finding(d, f, metric, source, snapshot_id) do
    %{
      watcher: d.name,
      anomaly_type: Map.get(metric, :anomaly_type, "unknown"),
      severity: f.severity,
      summary: Status.summarize(d.domain, f, metric),
      evidence:
        %{
          metric: f.name,
          value: f.value,
          baseline: f.baseline,
          threshold: f.threshold,
          z: f.z,
          samples: f.samples,
          source: source
        }
        |> then(&if snapshot_id, do: Map.put(&1, :snapshot_id, snapshot_id), else: &1),
      entities: Map.get(metric, :entities, [])
    }
  end

  # The metrics that matter most first: firing, then pending, then the
  # domain's order; formatted with their unit.
  defp key_figures(%{fresh: []}), do: %{}

  defp key_figures(d) do
    firing = MapSet.new(d.firing, & &1.name)
    pending = MapSet.new(d.pending)

    d.fresh
    |> Enum.with_index()
    |> Enum.sort_by(fn {m, i} ->
      {if(MapSet.member?(firing, m.name),
         do: 0,
         else: if(MapSet.member?(pending, m.name), do: 1, else: 2)
       ), i}
    end)
    |> Enum.take(@max_figures)
    |> Map.new(fn {m, _} -> figure(m) end)
  end

  # A counter's rate needs two samples; one fresh snapshot gives its total.
  defp figure(%{kind: :counter} = m), do: {"#{m.label} (total)", Domain.format(m.value, :count)}
  defp figure(m), do: {m.label, Domain.format(m.value, Map.get(m, :unit, :count))}

  # Metrics the watcher's gate sees anomalous but has not fired (not yet
  # sustained, or quiet after a recent alert), with their fresh value.
  defp watching(d) do
    by_name = Map.new(d.fresh, &{&1.name, &1})

    Enum.map(d.pending, fn name ->
      case by_name[name] do
        nil -> name
        m -> "#{elem(figure(m), 0)} #{elem(figure(m), 1)}"
      end
    end)
  end

  defp gate_alerts(domains, findings) do
    by_watcher = Map.new(domains, &{&1.name, &1})

    findings
    |> Enum.group_by(&{&1.watcher, &1.anomaly_type})
    |> Enum.sort()
    |> Enum.map(fn {{watcher, type}, group} ->
      d = by_watcher[watcher]
      lead = Enum.find(group, &(&1.severity == :critical)) || hd(group)
      severity = lead.severity

      Alert.new(
        watcher: watcher,
        severity: severity,
        state: severity,
        anomaly_type: type,
        summary: lead.summary,
        observation: Enum.map_join(group, "; ", & &1.summary),
        hypothesis: Alerts.hypothesis(d.domain, type),
        evidence: %{
          snapshot_ids:
            group
            |> Enum.map(& &1.evidence[:snapshot_id])
            |> Enum.reject(&is_nil/1)
            |> Enum.uniq(),
          values: Loop.evidence_values(group)
        },
        entities: Loop.entities(group),
        source: :gate
      )
    end)
  end

  defp fire(alerts, watchers) do
    pids = Map.new(watchers)

    for alert <- alerts, pid = pids[alert.watcher] do
      GenServer.cast(pid, {:fire_external, alert})
    end
  end

  ## The model

  defp model_config(instance) do
    case Beamlens.Status.llm_config(instance) do
      nil ->
        {:no_model, "no provider configured"}

      config ->
        case LLM.budget() do
          %{budget: limit, used: used} when is_integer(limit) and used >= limit ->
            {:no_model, "token budget spent (#{used} of #{limit} tokens this hour)"}

          _ ->
            {:ok, config}
        end
    end
  end

  defp model(report, config, domains, deadline, opts) do
    callbacks =
      Enum.reduce(domains, %{}, &Map.merge(&2, Beamlens.Watcher.lua_callbacks(&1.domain)))

    start = %{
      report: report,
      domains: domains,
      functions: Map.keys(callbacks),
      max_iterations: opts[:max_iterations],
      max_tokens: opts[:max_tokens],
      deadline: deadline
    }

    run = %{config: config, callbacks: callbacks, alerts: []}

    case drive(Loop.start(start, now()), run) do
      %{requests: 0, outcome: {:llm_error, error}} ->
        %{
          report
          | model_used: false,
            no_model_reason: "provider unavailable: #{Exception.message(error)}",
            outcome: :no_model
        }

      result ->
        {summary, hypothesis} = result.answer || {nil, nil}

        %{
          report
          | model_used: true,
            summary: summary,
            hypothesis: hypothesis,
            tokens: result.tokens,
            alerts: merge_alerts(report.alerts, result.alerts),
            outcome:
              case result.outcome do
                {:llm_error, error} -> {:llm_error, error.reason}
                other -> other
              end
        }
    end
  end

  # The model's alerts replace the gate's of the same watcher and type.
  defp merge_alerts(gate, model) do
    covered = MapSet.new(model, &{&1.watcher, &1.anomaly_type})
    Enum.reject(gate, &MapSet.member?(covered, {&1.watcher, &1.anomaly_type})) ++ model
  end

  # Carries out the loop's effects (`Beamlens.Investigation.Loop`) until it
  # finishes: the model requests and Lua runs are awaited here, at most
  # until the deadline; the model's alerts are made here.
  defp drive({loop, [effect | rest]}, run) do
    case effect do
      {:chat, request} -> drive(chat(loop, request, run), run)
      {:lua, _call, code} -> drive(lua(loop, code, run), run)
      {:fire, fields} -> drive({loop, rest}, %{run | alerts: [Alert.new(fields) | run.alerts]})
      {:finish, result} -> Map.put(result, :alerts, Enum.reverse(run.alerts))
      # :correction and {:tool_result, ...}: nothing to carry out.
      _ -> drive({loop, rest}, run)
    end
  end

  defp chat(loop, request, run) do
    case LLM.chat_async(run.config, request, caller: @caller) do
      {:ok, pending} ->
        ref = pending.ref

        receive do
          {^ref, raw} ->
            result = LLM.handle_reply(pending, raw)
            Loop.llm_replied(loop, result, pending.input_estimate || 0, now())
        after
          Loop.time_left(loop, now()) -> Loop.overdue(loop, now())
        end

      {:error, error} ->
        Loop.llm_replied(loop, {:error, error}, 0, now())
    end
  end

  defp lua(loop, code, run) do
    opts = [result: :full, telemetry_metadata: %{investigation: true}]

    case Lua.eval_async(code, run.callbacks, opts) do
      {:ok, ref} ->
        receive do
          {^ref, result} -> Loop.lua_replied(loop, result, now())
        after
          Loop.time_left(loop, now()) -> Loop.overdue(loop, now())
        end

      {:error, error} ->
        Loop.lua_replied(loop, {:error, error}, now())
    end
  end

  defp now, do: System.monotonic_time(:millisecond)
end
