# BeamLens's Lua sandbox (Luau in Rust, in slices of ~0.2 ms on the
# scheduler, or on a native thread pool) against luerl (Lua in Erlang, the
# engine other Elixir tools use), on diagnostic-style scripts.
# Every run starts from clean globals on both sides: luerl from a
# fresh `:luerl.init()`, BeamLens from a sealed Luau state of its pool with
# a fresh global table (as every run does). BeamLens has two figures:
# the full `Beamlens.Lua.eval/3` call, where the script runs in the caller
# in slices (the inline path) and, from its first callback call on, in a
# worker process of the run that also runs the callbacks; and
# `Beamlens.Lua.eval_async/3` until its reply arrives, the way watchers and
# investigations run the model's scripts (the same, in a runner process).
#
# Run with `bench/run` (installs Debian's erlang-luerl, builds the NIF in
# release mode). Timings are medians of several rounds measured in this
# same run, so the ratios hold on a shared, noisy machine.
#
# A second table measures the ceiling: the same Luau build with no sandbox
# (a test-only NIF), so that a run on a slow or busy host shows how much of
# a row is the interpreter itself and how much the sandbox adds.

unless Code.ensure_loaded?(:luerl) do
  IO.puts(:stderr, "luerl is not installed: run `bin/setup erlang-luerl` (or bench/run)")
  System.halt(1)
end

defmodule LuaBench do
  @rounds 7

  def scripts do
    [
      {"return 1 (fixed overhead)", "return 1", 2_000},
      {"sum 1..100000", "local s = 0 for i = 1, 100000 do s = s + i end return s", 20},
      {"build + sort 1,000 entries",
       """
       local t = {}
       for i = 1, 1000 do t[i] = {name = "proc" .. i, memory = (i * 7919) % 1000} end
       table.sort(t, function(a, b) return a.memory > b.memory end)
       return t[1].memory
       """, 50},
      {"callback x100", "local n = 0 for i = 1, 100 do n = n + cb.value(i) end return n", 100}
    ]
  end

  def beamlens(code) do
    callbacks = %{"cb.value" => fn x -> x end}
    fn -> {:ok, _} = Beamlens.Lua.eval(code, callbacks, max_instructions: 100_000_000) end
  end

  # The way watchers and investigations run the model's scripts: the
  # caller only sends and receives messages.
  def beamlens_async(code) do
    callbacks = %{"cb.value" => fn x -> x end}

    fn ->
      {:ok, ref} = Beamlens.Lua.eval_async(code, callbacks, max_instructions: 100_000_000)

      receive do
        {^ref, {:ok, _}} -> :ok
      end
    end
  end

  def luerl(code) do
    fn ->
      state = :luerl.init()
      {_, state} = :luerl.do("cb = {}", state)
      state = :luerl.set_table(["cb", "value"], fn [x], st -> {[x], st} end, state)
      {[_ | _], _} = :luerl.do(code, state)
    end
  end

  # Medians over rounds of the mean time per run, in microseconds, one per
  # function. The functions alternate round by round, so that all of them
  # see the same load on a shared machine.
  def measure(funs, iterations) do
    Enum.each(funs, & &1.())

    rounds =
      for _ <- 1..@rounds do
        Enum.map(funs, &per_run(&1, iterations))
      end

    for i <- 0..(length(funs) - 1), do: median(Enum.map(rounds, &Enum.at(&1, i)))
  end

  defp per_run(fun, iterations) do
    {micros, _} = :timer.tc(fn -> Enum.each(1..iterations, fn _ -> fun.() end) end)
    micros / iterations
  end

  defp median(values), do: values |> Enum.sort() |> Enum.at(div(length(values), 2))

  def run do
    Application.load(:luerl)
    check_results()

    IO.puts(
      "BeamLens Lua sandbox (Luau via mlua) vs luerl #{Application.spec(:luerl, :vsn) || "(Debian)"}"
    )

    IO.puts("median of #{@rounds} rounds, microseconds per run, clean globals per run\n")

    header = ["script", "eval us", "eval_async us", "luerl us", "luerl / eval", "luerl / async"]

    rows =
      for {name, code, iterations} <- scripts() do
        [ours, async, theirs] =
          measure([beamlens(code), beamlens_async(code), luerl(code)], iterations)

        [name, fmt(ours), fmt(async), fmt(theirs), ratio(theirs, ours), ratio(theirs, async)]
      end

    print_table(header, rows)

    IO.puts("""

    The ceiling: the same Luau build with no sandbox around it (no limits,
    no interrupt, one long-lived state, on a dirty scheduler), in this run.
    A row's ratio to luerl can only beat the bare interpreter's by cutting
    the sandbox's cost, shown as BeamLens / bare (1.0x = no cost).
    """)

    header = ["script", "bare us", "BeamLens us", "luerl us", "luerl / bare", "BeamLens / bare"]

    rows =
      for {name, code, iterations} <- scripts(), not String.contains?(code, "cb.") do
        [bare, ours, theirs] = measure([bare(code), beamlens(code), luerl(code)], iterations)
        [name, fmt(bare), fmt(ours), fmt(theirs), ratio(theirs, bare), ratio(ours, bare)]
      end

    print_table(header, rows)
  end

  # The bare interpreter: a test-only NIF (`bench/run` builds with
  # MIX_ENV=test), never used on untrusted code.
  def bare(code) do
    fn -> {:ok, _} = Beamlens.Native.lua_reference_eval(code) end
  end

  defp ratio(numerator, denominator), do: "#{Float.round(numerator / denominator, 1)}x"

  defp print_table(header, rows) do
    columns = length(header)

    widths =
      Enum.map(0..(columns - 1), fn i ->
        Enum.max(Enum.map([header | rows], &String.length(Enum.at(&1, i))))
      end)

    for row <- [header | rows] do
      row
      |> Enum.zip(widths)
      |> Enum.with_index()
      |> Enum.map_join("  ", fn {{cell, width}, i} ->
        if i == 0, do: String.pad_trailing(cell, width), else: String.pad_leading(cell, width)
      end)
      |> IO.puts()
    end
  end

  # Both engines must compute the same thing, or the comparison means nothing.
  defp check_results do
    for {name, code, _} <- scripts() do
      {:ok, ours} =
        Beamlens.Lua.eval(code, %{"cb.value" => fn x -> x end}, max_instructions: 100_000_000)

      state = :luerl.init()
      {_, state} = :luerl.do("cb = {}", state)
      state = :luerl.set_table(["cb", "value"], fn [x], st -> {[x], st} end, state)
      {[theirs], _} = :luerl.do(code, state)

      if ours != round(theirs) do
        raise "#{name}: BeamLens returned #{inspect(ours)}, luerl #{inspect(theirs)}"
      end

      with false <- String.contains?(code, "cb."),
           {:ok, bare} when bare != ours <- Beamlens.Native.lua_reference_eval(code) do
        raise "#{name}: BeamLens returned #{inspect(ours)}, the bare interpreter #{inspect(bare)}"
      end
    end
  end

  defp fmt(micros) when micros >= 100, do: "#{round(micros)}"
  defp fmt(micros), do: :erlang.float_to_binary(micros / 1, decimals: 1)
end

LuaBench.run()
