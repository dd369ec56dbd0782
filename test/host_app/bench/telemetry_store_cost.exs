# What BeamLens's TelemetryStore handler costs per real query, as a share of
# the query's own time, on the real PostgreSQL of bin/pg:
#
#   cd test/host_app && MIX_ENV=test mix run --no-start bench/telemetry_store_cost.exs
#
# Real [:host_app, :repo, :query] events are captured, then the handler is
# run on them and timed (minus a no-op handler's time, measured alike); the
# query's own time is the event's total_time (queue + query + decode), as
# Ecto measured it in the same run. Timing whole queries with and without
# the handler was tried: on a loaded 2-core machine, blocks of the same
# queries vary from 200 to 1,100 us each, which buries a few microseconds.

Logger.configure(level: :warning)

alias Beamlens.Domain.Ecto.TelemetryStore
alias HostApp.{Orders, Repo}

{:ok, _url} = HostApp.Boot.start(false)
{:ok, store} = TelemetryStore.lookup(Repo)
order = Orders.place!("bench", 1)
event = [:host_app, :repo, :query]
n = 2_000

for _ <- 1..500, do: Orders.find(order.id)

# Real events and their own time.
me = self()

:telemetry.attach("bench-capture", event, fn _e, m, md, _ -> send(me, {:event, m, md}) end, nil)
for _ <- 1..n, do: Orders.find(order.id)
:telemetry.detach("bench-capture")

events =
  for _ <- 1..n do
    receive do
      {:event, m, md} -> {m, md}
    end
  end

query_us =
  events
  |> Enum.map(fn {m, _} -> System.convert_time_unit(m.total_time, :native, :microsecond) end)
  |> Enum.sort()

median = fn list -> Enum.at(Enum.sort(list), div(length(list), 2)) end
own_us = median.(query_us)

rounds = 20

{handler_total, _} =
  :timer.tc(fn ->
    for _ <- 1..rounds, {m, md} <- events, do: TelemetryStore.handle_event(event, m, md, store)
  end)

noop = fn _e, _m, _md, _c -> :ok end

{noop_total, _} =
  :timer.tc(fn -> for _ <- 1..rounds, {m, md} <- events, do: noop.(event, m, md, store) end)

handler_us = (handler_total - noop_total) / (rounds * n)

IO.puts("""
TelemetryStore handler cost per real query (#{n} queries, #{rounds} rounds of their events)
  query's own time (median total_time):  #{own_us} us
  handler time per event:                #{Float.round(handler_us, 2)} us
  handler / query:                       #{Float.round(100 * handler_us / own_us, 2)} %
""")
