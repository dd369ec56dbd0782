defmodule Beamlens.Coordinator.Engine do
  # Wraps the Rust correlation engine (native/beamlens_core/src/correlation),
  # turning native errors into `Beamlens.Error`. The NIF reads the code
  # fields of `%Beamlens.Alert{}` structs itself. Every call that touches an
  # engine runs on a dirty CPU scheduler.
  @moduledoc false

  alias Beamlens.{Alert, Error, Native, Runtime}

  @type t :: reference()
  @type report :: %{insights: [map()], retired: [map()], rejected: [String.t()]}

  @spec new(keyword()) :: {:ok, t()} | {:error, Error.t()}
  def new(opts) do
    call(fn ->
      Native.correlation_new(%{
        window_ms: Keyword.fetch!(opts, :window_ms),
        order_tolerance_ms: Keyword.fetch!(opts, :order_tolerance_ms),
        max_members: Keyword.fetch!(opts, :max_alerts)
      })
    end)
  end

  @spec ingest(t(), [Alert.t()], integer()) :: {:ok, report()} | {:error, Error.t()}
  def ingest(engine, alerts, now_ms) do
    engine |> Native.correlation_ingest(alerts, now_ms) |> report()
  rescue
    e in ErlangError -> {:error, Runtime.not_loaded(e)}
  end

  @spec advance(t(), integer()) :: {:ok, report()} | {:error, Error.t()}
  def advance(engine, now_ms) do
    engine |> Native.correlation_advance(now_ms) |> report()
  rescue
    e in ErlangError -> {:error, Runtime.not_loaded(e)}
  end

  @spec stats(t()) :: {:ok, map()} | {:error, Error.t()}
  def stats(engine) do
    case call(fn -> Native.correlation_stats(engine) end) do
      {:ok, stats} -> {:ok, Map.new(stats, fn {key, value} -> {stat_key(key), value} end)}
      error -> error
    end
  end

  @stat_keys ~w(received duplicates stale folded evicted insights_reported live_members
                retained_members groups seen_ids horizon_ms window_ms max_members)
  for key <- @stat_keys do
    defp stat_key(unquote(key)), do: unquote(String.to_atom(key))
  end

  defp stat_key(other), do: other

  @spec rules() :: {:ok, [map()]} | {:error, Error.t()}
  def rules do
    case call(&Native.correlation_rules/0) do
      {:ok, rules} ->
        {:ok,
         Enum.map(rules, fn rule ->
           %{
             name: rule["name"],
             lead: rule["lead"],
             lag: rule["lag"],
             min_lag_ms: rule["min_lag_ms"],
             max_lag_ms: rule["max_lag_ms"],
             mutual: rule["mutual"],
             mechanism: rule["mechanism"],
             look_at: rule["look_at"]
           }
         end)}

      error ->
        error
    end
  end

  defp report({:ok, %{"insights" => insights, "retired" => retired} = report}) do
    {:ok, %{insights: insights, retired: retired, rejected: Map.get(report, "rejected", [])}}
  end

  defp report(other), do: Error.wrap(other)

  defp call(fun) do
    Error.wrap(fun.())
  rescue
    e in ErlangError -> {:error, Runtime.not_loaded(e)}
  end
end
