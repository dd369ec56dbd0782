# The :sup domain's supervisor tracker: what one refresh costs against the
# former walk (`which_children` on every supervisor, each tick), both
# measured in this run, best of 7. A throwaway application holds SUPS
# supervisors of KIDS workers each (defaults 199 and 20; try SUPS=10
# KIDS=5000 for large supervisors).
#
#   MIX_ENV=test mix run bench/sup_tracker.exs      (or bench/run sup)
alias Beamlens.Domain.Sup.Tracker

sups = String.to_integer(System.get_env("SUPS", "199"))
kids = String.to_integer(System.get_env("KIDS", "20"))
worker = fn i -> %{id: {:w, i}, start: {Agent, :start_link, [fn -> i end]}} end

inner =
  for s <- 1..sups do
    %{
      id: {:s, s},
      type: :supervisor,
      start: {Supervisor, :start_link, [Enum.map(1..kids, worker), [strategy: :one_for_one]]}
    }
  end

spec = [
  description: ~c"sup tracker bench",
  vsn: ~c"0",
  modules: [],
  registered: [],
  applications: [:kernel, :stdlib],
  mod: {Beamlens.TestApp, {inner, [strategy: :one_for_one]}}
]

:ok = :application.load({:application, :beamlens_sup_bench, spec})
:ok = Application.start(:beamlens_sup_bench)
_ = Tracker.start_link()
{first, view} = :timer.tc(&Tracker.refresh/0)

# The former walk: breadth-first from every application's top supervisor.
walk = fn ->
  Tracker.app_supervisors()
  |> Enum.map(&elem(&1, 0))
  |> Stream.unfold(fn
    [] ->
      nil

    [pid | rest] ->
      {pid, rest ++ for({_, c, :supervisor, _} <- Tracker.which_children(pid), is_pid(c), do: c)}
  end)
  |> Enum.take(200)
end

best = fn fun -> Enum.min(for _ <- 1..7, do: elem(:timer.tc(fun), 0)) end
refresh_us = best.(&Tracker.refresh/0)
walk_us = best.(walk)
ms = &Float.round(&1 / 1000, 2)

IO.puts(
  "#{length(view.supervisors)} supervisors followed, #{view.monitored_children} children monitored"
)

IO.puts("first refresh (lists and monitors everything): #{ms.(first)} ms")

IO.puts(
  "steady refresh #{ms.(refresh_us)} ms, former walk #{ms.(walk_us)} ms " <>
    "(#{Float.round(refresh_us / walk_us, 2)}x)"
)

{:memory, memory} = Process.info(Process.whereis(Tracker), :memory)
IO.puts("tracker process memory: #{div(memory, 1024)} KiB")
