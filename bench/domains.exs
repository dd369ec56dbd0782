# What the Ecto and Exception domains and the redactor cost the host.
#
#   bench/run domains        (MIX_ENV=test, NIF in release mode)
#
# The machine is shared and noisy: every figure is the median of several
# rounds, and each is also given as a ratio to a baseline measured in the
# same run:
#
#   * Ecto query handler (runs in the process that ran the query), called
#     directly with the event Ecto SQL emits, against a handler that only
#     bumps one counter: the least any telemetry handler does. Fast queries
#     stay in atomics; slow ones also send their SQL to the store.
#   * Exception reporting (runs in Tower's task or the crashing process),
#     against sending the same event to a process.
#   * Model-bound encoding with the default redactor, against the same
#     bounded JSON encoding without it.

alias Beamlens.Domain.Ecto.TelemetryStore
alias Beamlens.Domain.Exception.ExceptionStore
alias Beamlens.Watcher.Agent

Code.require_file("support/bench.exs", __DIR__)

defmodule Bench do
  defdelegate median(rounds, fun), to: Bench.Support
  defdelegate median_measured(rounds, fun), to: Bench.Support
  defdelegate timed(fun), to: Bench.Support

  def per(us, n), do: :erlang.float_to_binary(us / n, decimals: 2) <> " us"
  def ratio(a, b), do: :erlang.float_to_binary(a / max(b, 1), decimals: 1) <> "x"

  def row(label, us, n, base_us) do
    IO.puts(
      String.pad_trailing(label, 52) <>
        String.pad_leading(per(us, n), 10) <> "   " <> ratio(us, base_us)
    )
  end
end

rounds = 7

## Ecto

{:ok, _} = Registry.start_link(keys: :unique, name: Beamlens.Domain.Ecto.Registry)
{:ok, store_pid} = TelemetryStore.start_link(repo: Beamlens.EctoCase.Repo)
{:ok, store} = TelemetryStore.lookup(Beamlens.EctoCase.Repo)

native = &System.convert_time_unit(&1, :microsecond, :native)
event = [:beamlens_test, :repo, :query]

fast = %{
  query_time: native.(1_800),
  queue_time: native.(40),
  decode_time: native.(20),
  idle_time: native.(5_000),
  total_time: native.(1_860)
}

slow = %{fast | query_time: native.(250_000), total_time: native.(250_060)}

metadata = %{
  type: :ecto_sql_query,
  repo: Beamlens.EctoCase.Repo,
  query: ~s|SELECT u0."id", u0."email", u0."inserted_at" FROM "users" AS u0 WHERE (u0."id" = $1)|,
  params: [42],
  cast_params: [42],
  source: "users",
  result: {:ok, %{num_rows: 1}},
  options: [],
  stacktrace: nil
}

n = 100_000
counter = :counters.new(1, [:write_concurrency])
minimal = fn _event, _measurements, _metadata, c -> :counters.add(c, 1, 1) end

base = Bench.median(rounds, fn -> for _ <- 1..n, do: minimal.(event, fast, metadata, counter) end)

fast_us =
  Bench.median(rounds, fn ->
    for _ <- 1..n, do: TelemetryStore.handle_event(event, fast, metadata, store)
  end)

slow_n = 200

# A slow query in the querying process (the store is paused meanwhile, so
# that nothing is dropped), then how fast the store takes records in.
slow_us =
  Bench.median_measured(rounds, fn ->
    :sys.suspend(store_pid)

    us =
      Bench.timed(fn ->
        for _ <- 1..slow_n, do: TelemetryStore.handle_event(event, slow, metadata, store)
      end)

    :sys.resume(store_pid)
    _ = TelemetryStore.slow_queries(store, 1)
    us
  end)

drain_us =
  Bench.median_measured(rounds, fn ->
    :sys.suspend(store_pid)
    for _ <- 1..slow_n, do: TelemetryStore.handle_event(event, slow, metadata, store)
    Bench.timed(fn -> :sys.resume(store_pid) && TelemetryStore.slow_queries(store, 1) end)
  end)

# Four processes at once, as concurrent requests would.
parallel = fn fun ->
  1..4
  |> Enum.map(fn _ -> Task.async(fn -> for _ <- 1..div(n, 4), do: fun.() end) end)
  |> Enum.each(&Task.await(&1, 60_000))
end

base4 =
  Bench.median(rounds, fn -> parallel.(fn -> minimal.(event, fast, metadata, counter) end) end)

fast4 =
  Bench.median(rounds, fn ->
    parallel.(fn -> TelemetryStore.handle_event(event, fast, metadata, store) end)
  end)

window_us = Bench.median(rounds, fn -> for _ <- 1..100, do: TelemetryStore.window(store) end)
dropped = TelemetryStore.totals(store).dropped

IO.puts("Ecto query handler, per query (median of #{rounds} rounds)")
Bench.row("baseline: handler that bumps one counter", base, n, base)
Bench.row("TelemetryStore, fast query", fast_us, n, base)

Bench.row(
  "TelemetryStore, slow query (SQL sent to the store)",
  slow_us,
  slow_n,
  base / n * slow_n
)

Bench.row("baseline, 4 processes at once", base4, n, base4)
Bench.row("TelemetryStore, fast query, 4 processes at once", fast4, n, base4)

IO.puts(
  "store intake of slow-query records: #{Bench.per(drain_us, slow_n)} per record (same SQL)"
)

IO.puts(
  "window/1 (what a snapshot reads): #{Bench.per(window_us, 100)} per call; records dropped: #{dropped}"
)

GenServer.stop(store_pid)

## Exceptions

{:ok, _} = ExceptionStore.start_link(capture_logs: false, max_pending: 100_000)
sink = spawn(fn -> Stream.repeatedly(fn -> receive(do: (_ -> :ok)) end) |> Stream.run() end)

stack = [
  {MyApp.Checkout, :charge, [%{id: 1}, "tok"], [file: ~c"lib/my_app/checkout.ex", line: 88]},
  {MyAppWeb.CheckoutController, :create, 2,
   [file: ~c"lib/my_app_web/checkout_controller.ex", line: 21]},
  {Phoenix.Router, :__call__, 5, [file: ~c"lib/phoenix/router.ex", line: 478]}
]

tower_event = %{
  id: "0190a3c4",
  datetime: DateTime.utc_now(),
  level: :error,
  kind: :error,
  reason: %RuntimeError{message: "payment gateway returned 502 for order 1234"},
  stacktrace: stack,
  metadata: %{process: %{pid: self()}}
}

m = 10_000
send_us = Bench.median(rounds, fn -> for _ <- 1..m, do: send(sink, {:event, tower_event}) end)

# The reporting process's side (the store is paused meanwhile), then the
# store's.
exception_store = Process.whereis(ExceptionStore)

report_us =
  Bench.median_measured(rounds, fn ->
    :sys.suspend(exception_store)
    us = Bench.timed(fn -> for _ <- 1..m, do: ExceptionStore.report_event(tower_event) end)
    :sys.resume(exception_store)
    ExceptionStore.stats()
    us
  end)

intake_us =
  Bench.median_measured(rounds, fn ->
    :sys.suspend(exception_store)
    for _ <- 1..m, do: ExceptionStore.report_event(tower_event)
    Bench.timed(fn -> :sys.resume(exception_store) && ExceptionStore.stats() end)
  end)

IO.puts("\nException reporting, per event, in the reporting process")
Bench.row("baseline: send the event to a process", send_us, m, send_us)
Bench.row("ExceptionStore.report_event/1", report_us, m, send_us)
IO.puts("store intake: #{Bench.per(intake_us, m)} per event (one group)")

## Redaction

require Logger

log_snapshot = %{
  errors_total: 1_204,
  warnings_total: 87,
  top_modules: for(i <- 1..5, do: %{module: "MyApp.Worker#{i}", errors: 100 - i, warnings: i}),
  recent_errors:
    for i <- 1..5 do
      %{
        seq: i,
        time: "2024-06-01T12:00:0#{i}Z",
        level: :error,
        module: "MyApp.Payments",
        pid: "#PID<0.#{400 + i}.0>",
        message:
          "payment gateway returned 502 for order #{i} of customer #{i} (retrying in 500 ms, " <>
            "upstream https://payments.internal/v2/charges)"
      }
    end
}

lua_result =
  for i <- 1..300 do
    %{
      "pid" => "#PID<0.#{i}.0>",
      "name" => "MyApp.Worker.#{i}",
      "current_function" => "gen_server.loop/7",
      "memory" => 10_000 + i,
      "reductions" => 1_000_000 + i
    }
  end

k = 200
raw = fn term -> Beamlens.Native.json_encode(term, 6_000) end

for {label, term} <- [
      {"log snapshot (5 errors)", log_snapshot},
      {"Lua result (300 processes)", lua_result}
    ] do
  raw_us = Bench.median(rounds, fn -> for _ <- 1..k, do: raw.(term) end)
  red_us = Bench.median(rounds, fn -> for _ <- 1..k, do: Agent.encode(term, 6_000) end)

  IO.puts("\nEncoding for the model: #{label}")
  Bench.row("baseline: bounded JSON encoding", raw_us, k, raw_us)
  Bench.row("redacted, then encoded (Agent.encode/2)", red_us, k, raw_us)
end
