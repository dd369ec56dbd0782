defmodule Beamlens.Status do
  # Builds the map of `Beamlens.status/1`: each watcher's part is computed
  # in the watcher process from its state (cheap, no I/O); tokens, providers
  # and the budget are added in the caller from Beamlens.Usage and
  # Beamlens.LLM.
  @moduledoc false

  alias Beamlens.{LLM, Usage}

  @doc false
  # Called in the watcher process with its state.
  def watcher(state) do
    {mode, mode_reason} = mode(state)

    %{
      name: state.name,
      state: state.status,
      reason: state.status_reason,
      mode: mode,
      mode_reason: mode_reason,
      paused: Beamlens.Watcher.paused?(state),
      paused_until: if(Beamlens.Watcher.paused?(state), do: state.paused_until_at),
      last_tick_at: state.last_tick_at,
      next_tick_at:
        state.last_tick_at &&
          DateTime.add(state.last_tick_at, state.opts[:interval], :millisecond),
      firing: state.firing |> Map.keys() |> Enum.sort(),
      last_check: state.last_check,
      alerts_fired: state.alerts_fired,
      checking?: state.wake != nil,
      ticks: state.tick,
      last_error: state.last_error
    }
  end

  defp mode(%{llm: nil}), do: {:rules_only, "no provider configured"}

  defp mode(state) do
    clock = System.monotonic_time(:millisecond) - state.started_at

    if clock < state.llm_paused_until do
      until = DateTime.add(DateTime.utc_now(), state.llm_paused_until - clock, :millisecond)
      {:rules_only, "token budget spent until #{Calendar.strftime(until, "%H:%M")} UTC"}
    else
      {:model, nil}
    end
  end

  @doc false
  def build(instance, watcher_infos) do
    config = llm_config(instance)
    providers = providers(config)
    budget = budget(config)
    down? = providers != [] and Enum.all?(providers, &(&1.breaker == :open))

    watchers =
      Enum.map(watcher_infos, fn info ->
        info = Map.put(info, :tokens, Usage.get({:watcher, info.name}))

        cond do
          info.mode != :model -> info
          down? -> %{info | mode: :rules_only, mode_reason: "provider unavailable (breaker open)"}
          budget.left == 0 -> %{info | mode: :rules_only, mode_reason: "token budget spent"}
          true -> info
        end
      end)

    %{
      node: node(),
      watchers: watchers,
      coordinator: coordinator(instance),
      providers: providers,
      budget: budget,
      investigations: %{tokens: Usage.get(:investigation)}
    }
  end

  @doc false
  def llm_config(instance) do
    case Registry.meta(Module.concat(instance, Registry), :llm_config) do
      {:ok, config} -> config
      :error -> nil
    end
  rescue
    ArgumentError -> nil
  end

  @doc false
  def coordinator_name(instance) do
    case Registry.meta(Module.concat(instance, Registry), :coordinator) do
      {:ok, {_module, name}} -> name
      _ -> nil
    end
  rescue
    ArgumentError -> nil
  end

  defp coordinator(instance) do
    with name when name != nil <- coordinator_name(instance),
         {:ok, stats} <- safe_stats(name) do
      %{
        leader?: stats.leader?,
        insights: stats.insights,
        tokens: Usage.get({:coordinator, name})
      }
    else
      _ -> nil
    end
  end

  defp safe_stats(name) do
    Beamlens.Coordinator.stats(name)
  catch
    :exit, _ -> :error
  end

  defp providers(nil), do: []

  defp providers(config) do
    Enum.map(config.providers, fn p ->
      %{
        provider: p.provider,
        model: p[:model] || p[:deployment],
        breaker: Usage.breaker(p.provider, Map.take(p, [:breaker_threshold, :breaker_cooldown]))
      }
    end)
  end

  defp budget(nil), do: %{limit: :infinity, used_this_hour: 0, left: :infinity}

  defp budget(_config) do
    %{budget: limit, used: used} = LLM.budget()
    left = if limit == :infinity, do: :infinity, else: max(limit - used, 0)
    %{limit: limit, used_this_hour: used, left: left}
  rescue
    _ -> %{limit: :infinity, used_this_hour: 0, left: :infinity}
  end
end
