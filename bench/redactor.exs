# Redaction time against text size, 1 KB to 1 MB, on ordinary and hostile
# text.
#
#   bench/run redactor
#
# Each row is the median of several runs, given per KB and as a ratio to a
# baseline measured in the same run on the same text: `:binary.replace/4` of
# one literal that is not there (one linear scan, the least work any
# redactor does). Linear time shows as a flat ratio down a column; a
# quadratic rule would make it grow 4x per 4x of text.
#
# The last table is the other option that was considered: the same rules
# as Erlang (PCRE) regexes applied one after the other, as the redactor did
# before it moved to native code. Runs that pass 2 s are stopped.

alias Beamlens.Redactor

Code.require_file("support/bench.exs", __DIR__)

defmodule Bench do
  defdelegate median(runs, fun), to: Bench.Support

  # Microseconds per call, median of 5, each timing at least ~64 KB of work
  # so that small sizes are not lost in the timer's resolution.
  def per_call(bytes, fun) do
    n = max(1, div(65_536, bytes))
    median(5, fn -> for _ <- 1..n, do: fun.() end) / n
  end

  # Runs `fun` in a process that is killed after `ms`.
  def bounded(ms, fun) do
    task = Task.async(fn -> median(3, fun) end)

    case Task.yield(task, ms) || Task.shutdown(task, :brutal_kill) do
      {:ok, us} -> us
      _ -> nil
    end
  end

  def fmt(nil), do: String.pad_leading("> 2 s", 10)

  def fmt(us) when us >= 1000,
    do: String.pad_leading(:erlang.float_to_binary(us / 1000, decimals: 1) <> " ms", 10)

  def fmt(us), do: String.pad_leading(:erlang.float_to_binary(us * 1.0, decimals: 1) <> " us", 10)

  def ratio(_a, nil), do: String.pad_leading("-", 8)
  def ratio(nil, _b), do: String.pad_leading("-", 8)

  def ratio(a, b),
    do: String.pad_leading(:erlang.float_to_binary(a / max(b, 1), decimals: 1) <> "x", 8)

  def fill(unit, bytes) do
    unit |> String.duplicate(div(bytes, byte_size(unit)) + 1) |> binary_part(0, bytes)
  end
end

sizes = [1_024, 4_096, 16_384, 65_536, 262_144, 1_048_576]

shapes = [
  {"log lines",
   "12:30:45.123 [error] GET /api/orders/42 failed for alice@example.com in 812 ms (pid #PID<0.123.0>)\n"},
  {"password + a-a-a", :password},
  {"key=value flood", "password=x;"},
  {"@ flood", "a@"},
  {"user:pass@ flood", "a:b@c"},
  {"url flood", "http://u:p"},
  {"digits", "4111 "},
  {"base64 run", "AbC9+/"},
  {"Bearer flood", "Bearer "}
]

texts = fn
  :password, bytes -> "password " <> Bench.fill("a-", bytes - 9)
  unit, bytes -> Bench.fill(unit, bytes)
end

redactor = Redactor.current()
_ = Redactor.redact(String.duplicate("warm up password=x alice@example.com ", 100), redactor)

IO.puts("""
Redactor (native rules): time per call, and its ratio to the baseline
(:binary.replace of one literal absent from the text). Last column: time
per KB at 1 MB over time per KB at 16 KB (1 = linear, 64 = quadratic).
""")

IO.puts(
  String.pad_trailing("text", 18) <>
    Enum.map_join(sizes, "", &String.pad_leading("#{div(&1, 1024)} KB", 20)) <>
    String.pad_leading("1MB/16KB", 12)
)

for {name, unit} <- shapes do
  cells =
    for bytes <- sizes do
      text = texts.(unit, bytes)
      base = Bench.per_call(bytes, fn -> :binary.replace(text, "zq-not-there", "x") end)
      us = Bench.per_call(bytes, fn -> Redactor.redact(text, redactor) end)
      {us, base}
    end

  # Time per KB at 1 MB against time per KB at 16 KB: about 1 when linear,
  # 64 when quadratic.
  {small, _} = Enum.at(cells, 2)
  {large, _} = List.last(cells)
  growth = large / 1024 / (small / 16)

  IO.puts(
    String.pad_trailing(name, 18) <>
      Enum.map_join(cells, "", fn {us, base} ->
        String.pad_leading(Bench.fmt(us) <> Bench.ratio(us, base), 20)
      end) <> String.pad_leading(:erlang.float_to_binary(growth, decimals: 1), 12)
  )
end

# 1 MB of hostile text per second, for the summary line.
text = texts.(:password, 1_048_576)
us = Bench.median(5, fn -> Redactor.redact(text, redactor) end)
IO.puts("\n1 MB of \"password a-a-a-...\": #{Bench.fmt(us) |> String.trim()}")

# The same rules as PCRE (Erlang :re), applied in turn with a fixed
# replacement: the cost of the Elixir-only option.
pcre =
  ~S"""
  -----BEGIN[A-Z ]{0,40}PRIVATE KEY-----[\s\S]*?(?:-----END[A-Z ]{0,40}PRIVATE KEY-----|\z)
  \beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*
  \b([a-zA-Z][a-zA-Z0-9+.-]{0,30}://[^\s:/@"'<>]{0,256}:)([^\s"'<>]+)@
  (?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]{8,}=*
  (?i)\b(basic)\s+([A-Za-z0-9+/]{4,}={0,2})
  \bsk-[A-Za-z0-9][A-Za-z0-9_-]{19,}|\bghp_[A-Za-z0-9]{30,}|\bAKIA[A-Z0-9]{16}\b
  (?i)\b([A-Za-z0-9_.-]{0,64}?(?:password|passwd|secret|token|api[_-]?key|cookie|auth)s?(?:\\?["']?\s*(?:=>|[:=])|\\?["']\s*,)\s*)("[^"]*"|'[^']*'|[^\s"',;&}\])\[{%\\][^\s"',;&}\])\\]*)
  \b([A-Za-z0-9._-]{1,64}:)([^\s"'<>\[\]:]{1,256})@([A-Za-z0-9])
  [A-Za-z0-9/+=]{40,}
  \b[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}\b
  \b(?:[0-9][ .-]?){12,18}[0-9]\b
  """
  |> String.split("\n", trim: true)
  |> Enum.map(&Regex.compile!/1)

pcre_redact = fn text -> Enum.reduce(pcre, text, &Regex.replace(&1, &2, "[REDACTED]")) end

IO.puts("\nThe PCRE option: the same rules as Erlang regexes, one pass each\n")

IO.puts(
  String.pad_trailing("text", 18) <>
    Enum.map_join(sizes, "", &String.pad_leading("#{div(&1, 1024)} KB", 20))
)

for {name, unit} <- shapes do
  {cells, _} =
    Enum.map_reduce(sizes, false, fn bytes, gave_up? ->
      if gave_up? do
        {String.pad_leading("-", 20), true}
      else
        text = texts.(unit, bytes)
        base = Bench.median(5, fn -> :binary.replace(text, "zq-not-there", "x") end)
        us = Bench.bounded(2_000, fn -> pcre_redact.(text) end)
        {(Bench.fmt(us) <> Bench.ratio(us, base)) |> String.pad_leading(20), us == nil}
      end
    end)

  IO.puts(String.pad_trailing(name, 18) <> Enum.join(cells))
end
