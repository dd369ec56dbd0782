defmodule Beamlens.Domain.Exception.LoggerHandler do
  @moduledoc """
  The `:logger` handler that feeds `Beamlens.Domain.Exception.ExceptionStore`
  when Tower does not: it turns the reports OTP logs when a process crashes
  (`GenServer`, `:gen_statem`, `:gen_event`, `Task`, `proc_lib` and plain
  processes) and error logs that carry a `crash_reason` into exception
  events. The store installs it (see its `:capture_logs` option).

  It runs in the process that logs, so it only recognises the report and
  hands it over; it never raises (`:logger` removes a failing handler).
  """

  alias Beamlens.Domain.Exception.{ExceptionStore, Fingerprint}
  alias Beamlens.Store

  @handler_id :beamlens_exception_store

  @doc "Installs the handler, which hands crashes to the store's `shared` state."
  @spec install(map()) :: :ok | {:error, term()}
  def install(shared), do: Store.attach_logger(@handler_id, __MODULE__, :error, shared)

  @doc "Removes the handler."
  @spec remove() :: :ok
  def remove, do: Store.detach_logger(@handler_id)

  @doc "The `:logger` callback: records a crash report or error log with a crash reason."
  @spec log(:logger.log_event(), :logger.handler_config()) :: :ok
  def log(%{level: level, msg: msg, meta: meta}, %{config: shared})
      when level in [:error, :critical, :alert, :emergency] do
    case crash(msg, meta) do
      {kind, reason, stacktrace, pid} ->
        # A crash_reason on an application's own log line is not a
        # process termination; OTP's reports and the emulator's "process
        # raised" errors are (since Elixir 1.15 both arrive translated,
        # with a crash_reason).
        terminal? = not Map.has_key?(meta, :crash_reason) or otp_termination?(meta)

        report(shared, kind, reason, stacktrace, pid, meta[:time], terminal?)

      nil ->
        :ok
    end
  rescue
    _ -> :ok
  end

  def log(_event, _config), do: :ok

  defp report(shared, kind, reason, stacktrace, pid, time_us, terminal?) do
    entry =
      kind
      |> Fingerprint.event(reason, stacktrace)
      |> Map.merge(%{
        source: :logger,
        pid: pid,
        terminal: terminal?,
        at:
          if(is_integer(time_us), do: div(time_us, 1_000), else: System.system_time(:millisecond))
      })

    ExceptionStore.submit(shared, entry)
  end

  defp otp_termination?(%{domain: [:otp | _]}), do: true
  defp otp_termination?(%{error_logger: %{emulator: true}}), do: true
  defp otp_termination?(_meta), do: false

  # Two shapes of the same crashes reach this handler. Elixir 1.14 lets
  # OTP's reports through as they are (the clauses on `{:report, ...}`
  # below). Since 1.15, Logger's primary filter translates them to text
  # and puts the crash in the metadata as `crash_reason` (the first
  # clause), and it drops the `[:otp, :sasl]` reports (`proc_lib` crash
  # reports, supervisor reports) unless the host sets
  # `handle_sasl_reports: true`: a process whose only report is its
  # proc_lib crash report is then in no log, and not captured here either.
  # Libraries such as Plug and Bandit also attach a `crash_reason`.
  defp crash(_msg, %{crash_reason: {reason, stacktrace}} = meta) when is_list(stacktrace),
    do: from_reason(reason, stacktrace, meta[:pid])

  defp crash({:report, %{label: {:gen_server, :terminate}, reason: reason}}, meta),
    do: from_exit_reason(reason, meta[:pid])

  defp crash({:report, %{label: {:gen_statem, :terminate}, reason: {kind, reason, st}}}, meta),
    do: {kind, reason, st, meta[:pid]}

  defp crash({:report, %{label: {:gen_event, :terminate}, reason: reason}}, meta),
    do: from_exit_reason(reason, meta[:pid])

  defp crash({:report, %{label: {Task.Supervisor, :terminating}, report: report}}, meta),
    do: from_exit_reason(report[:reason], meta[:pid])

  defp crash({:report, %{label: {:proc_lib, :crash}, report: [info | _]}}, meta)
       when is_list(info) do
    case info[:error_info] do
      {kind, reason, stacktrace} -> {kind, reason, stacktrace, info[:pid] || meta[:pid]}
      _ -> nil
    end
  end

  # A process started with spawn/1 that raised.
  defp crash({~c"Error in process ~p with exit value:~n~p~n", [pid, reason]}, _meta),
    do: from_exit_reason(reason, pid)

  # The same, on a distributed node.
  defp crash(
         {~c"Error in process ~p on node ~p with exit value:~n~p~n", [pid, _node, reason]},
         _meta
       ),
       do: from_exit_reason(reason, pid)

  defp crash(_msg, _meta), do: nil

  defp from_reason({:nocatch, value}, stacktrace, pid), do: {:throw, value, stacktrace, pid}

  # Elixir 1.15+ translates an uncaught throw in a plain process to this.
  defp from_reason(%ErlangError{original: {:nocatch, value}}, stacktrace, pid),
    do: {:throw, value, stacktrace, pid}

  defp from_reason(reason, stacktrace, pid) do
    if is_exception(reason),
      do: {:error, reason, stacktrace, pid},
      else: {:exit, reason, stacktrace, pid}
  end

  # OTP reports an error raised in a process as {reason, stacktrace}.
  defp from_exit_reason({{:nocatch, value}, stacktrace}, pid) when is_list(stacktrace),
    do: {:throw, value, stacktrace, pid}

  defp from_exit_reason({reason, [{_, _, _, _} | _] = stacktrace}, pid),
    do: {:error, reason, stacktrace, pid}

  defp from_exit_reason(reason, pid), do: {:exit, reason, [], pid}
end
