defmodule Beamlens.Domain.Exception.TowerReporter do
  @moduledoc """
  The [Tower](https://hex.pm/packages/tower) reporter that feeds
  `Beamlens.Domain.Exception.ExceptionStore`:

      config :tower, reporters: [Beamlens.Domain.Exception.TowerReporter]

  `Beamlens.Domain.Exception.ExceptionStore` is a reporter too (it passes
  every event here), so the configuration the README shows,
  `reporters: [Beamlens.Domain.Exception.ExceptionStore]`, keeps working.

  It runs in the process that reports: it reduces the event (see
  `Beamlens.Domain.Exception.Fingerprint`) and hands it to the store, or
  only counts it when too many wait. It never raises.
  """

  alias Beamlens.Domain.Exception.{ExceptionStore, Fingerprint}

  @doc """
  Tower's reporter callback: records a `Tower.Event` (any map with `:kind`,
  `:reason` and optionally `:level`, `:stacktrace`, `:datetime`, `:id`,
  `:metadata`). Always returns `:ok`; does nothing when the store is not
  running.
  """
  @spec report_event(map() | term()) :: :ok
  def report_event(%{kind: kind, reason: reason} = event) do
    with %{} = shared <- ExceptionStore.shared() do
      # Tower.Event is a struct: no Access, only Map functions.
      entry =
        kind
        |> Fingerprint.event(reason, Map.get(event, :stacktrace))
        |> Map.merge(%{
          source: :tower,
          pid: tower_pid(event),
          terminal: otp_report?(Map.get(event, :log_event)),
          at: tower_time(Map.get(event, :datetime))
        })

      ExceptionStore.submit(shared, entry)
    end

    :ok
  rescue
    _ -> :ok
  end

  def report_event(_other), do: :ok

  @doc """
  Whether Tower is loaded and configured with this reporter (or with
  `Beamlens.Domain.Exception.ExceptionStore`): then the store's `:logger`
  handler would count every crash twice.
  """
  @spec configured?() :: boolean()
  def configured? do
    reporters = List.wrap(Application.get_env(:tower, :reporters, []))

    Code.ensure_loaded?(Tower) and
      Enum.any?([__MODULE__, ExceptionStore], &(&1 in reporters))
  end

  defp tower_pid(event) do
    case Map.get(event, :metadata) do
      %{process: %{pid: pid}} when is_pid(pid) ->
        pid

      _ ->
        case Map.get(event, :log_event) do
          %{meta: %{pid: pid}} when is_pid(pid) -> pid
          _ -> nil
        end
    end
  end

  # Tower events built from an OTP report (a process that crashed).
  defp otp_report?(%{meta: %{domain: [:otp | _]}}), do: true
  defp otp_report?(_log_event), do: false

  defp tower_time(%DateTime{} = datetime), do: DateTime.to_unix(datetime, :millisecond)
  defp tower_time(_), do: System.system_time(:millisecond)
end
