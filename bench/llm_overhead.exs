# The LLM client's own overhead per request, against the loopback server.
#
#   mix run bench/llm_overhead.exs        (the NIF is built in release)
#
# Baseline, measured in the same run against the same server: the raw round
# trip, i.e. the very same request bytes written to a kept-alive :gen_tcp
# socket and the reply read back, with no HTTP client at all. BeamLens's
# number covers everything a caller pays: validating and converting the
# request, building the provider's JSON, reqwest, parsing the reply, usage
# accounting, the reply message and handle_reply/2 with its telemetry.
#
# Environment: ITERATIONS (default 2000), BATCHES (default 20).

# The loopback server and fixtures live in test/support; so does a
# :telemetry stand-in for when the real library is absent (telemetry events
# are part of what a request costs).
for {module, file} <- [
      {:telemetry, "test/support/telemetry.ex"},
      {Beamlens.LoopbackServer, "test/support/loopback_server.ex"},
      {Beamlens.LLMFixtures, "test/support/llm_fixtures.ex"}
    ],
    not Code.ensure_loaded?(module) do
  Code.require_file(file)
end

defmodule Bench.LLMOverhead do
  alias Beamlens.{LLM, LLMFixtures, LoopbackServer}
  alias Beamlens.LLM.Config

  @tools [
    %{
      name: "execute_lua",
      description: "Runs read-only Lua against the live runtime.",
      parameters: %{
        "type" => "object",
        "properties" => %{"code" => %{"type" => "string"}},
        "required" => ["code"]
      }
    },
    %{name: "take_snapshot", description: "Takes a snapshot.", parameters: %{"type" => "object"}},
    %{
      name: "fire_alert",
      description: "Fires an alert.",
      parameters: %{
        "type" => "object",
        "properties" => %{
          "severity" => %{"type" => "string", "enum" => ["info", "warning", "critical"]},
          "summary" => %{"type" => "string"}
        }
      }
    }
  ]

  # A watcher-sized request: system prompt, a snapshot, a tool round trip.
  def request do
    snapshot = Map.new(1..60, &{"metric_#{&1}", &1 * 1_000})

    %{
      system: String.duplicate("You watch the BEAM and investigate anomalies. ", 40),
      messages: [
        %{role: :user, content: "Snapshot: " <> inspect(snapshot)},
        %{
          role: :assistant,
          content: "Looking closer.",
          tool_calls: [
            %{id: "call_1", name: "execute_lua", arguments: %{"code" => "return beam.memory()"}}
          ]
        },
        %{role: :tool, tool_call_id: "call_1", name: "execute_lua", content: inspect(snapshot)}
      ],
      tools: @tools,
      max_tokens: 1024
    }
  end

  def run do
    iterations = env_int("ITERATIONS", 2_000)
    batches = env_int("BATCHES", 20)

    reply =
      LLMFixtures.tool_calls(
        :anthropic,
        [
          {"fire_alert",
           %{"severity" => "warning", "summary" => "ETS memory doubled in 5 minutes"}}
        ],
        text: "ETS table sessions grows without bound.",
        usage: %{input: 1_200, output: 80}
      )

    server = start_server(reply)
    {:ok, config} = Config.new(LLMFixtures.config(:anthropic, server, timeout: 10_000))
    request = request()

    # One request through BeamLens gives the exact bytes the raw client sends.
    capture = start_server(reply, record: true)
    {:ok, capture_config} = Config.new(LLMFixtures.config(:anthropic, capture))
    {:ok, _} = LLM.chat(capture_config, request)
    [sent] = LoopbackServer.requests(capture)
    raw_request = raw_bytes(sent, LoopbackServer.port(server))

    IO.puts("""
    LLM client overhead (#{System.otp_release() |> then(&"OTP #{&1}")}, #{System.schedulers_online()} schedulers, NIF #{System.get_env("BEAMLENS_NIF_PROFILE", "release")})
    request #{byte_size(sent.body)} bytes, reply #{byte_size(LoopbackServer.JSON.encode!(reply.body))} bytes, #{iterations} sequential requests each
    """)

    port = LoopbackServer.port(server)
    {:ok, socket} = connect(port)

    # Warm up both paths (connections, code, allocators).
    for _ <- 1..200, do: raw_round_trip(socket, raw_request)
    for _ <- 1..200, do: {:ok, _} = LLM.chat(config, request)

    # Interleave the two so that machine noise hits both alike.
    {raw, lens} =
      Enum.reduce(1..iterations, {[], []}, fn _, {raw, lens} ->
        {t_raw, :ok} = :timer.tc(fn -> raw_round_trip(socket, raw_request) end)
        {t_lens, {:ok, _}} = :timer.tc(fn -> LLM.chat(config, request) end)
        {[t_raw | raw], [t_lens | lens]}
      end)

    report_sequential(raw, lens)
    report_concurrent(config, request, port, raw_request, batches)
  end

  defp report_sequential(raw, lens) do
    [raw_p50, raw_p99] = percentiles(raw, [50, 99])
    [lens_p50, lens_p99] = percentiles(lens, [50, 99])

    IO.puts("""
    sequential, one request at a time (µs)
                          p50      p99
      raw round trip   #{fmt(raw_p50)} #{fmt(raw_p99)}
      BeamLens         #{fmt(lens_p50)} #{fmt(lens_p99)}
      overhead         #{fmt(lens_p50 - raw_p50)} #{fmt(lens_p99 - raw_p99)}
      ratio            #{ratio(lens_p50, raw_p50)} #{ratio(lens_p99, raw_p99)}
    """)
  end

  defp report_concurrent(config, request, port, raw_request, batches) do
    sockets = for _ <- 1..100, do: elem(connect(port), 1)
    # Warm up 100 pooled connections in the client too.
    batch_lens(config, request)
    batch_raw(sockets, raw_request)

    {raw_walls, lens_walls} =
      Enum.reduce(1..batches, {[], []}, fn _, {raw, lens} ->
        {t_raw, :ok} = :timer.tc(fn -> batch_raw(sockets, raw_request) end)
        {t_lens, :ok} = :timer.tc(fn -> batch_lens(config, request) end)
        {[t_raw | raw], [t_lens | lens]}
      end)

    [raw_p50, raw_max] = percentiles(raw_walls, [50, 100])
    [lens_p50, lens_max] = percentiles(lens_walls, [50, 100])

    IO.puts("""
    100 concurrent requests, wall time per batch of 100 (µs, #{batches} batches)
                          p50      max
      raw round trip   #{fmt(raw_p50)} #{fmt(raw_max)}
      BeamLens         #{fmt(lens_p50)} #{fmt(lens_max)}
      overhead         #{fmt(lens_p50 - raw_p50)} #{fmt(lens_max - raw_max)}
      ratio            #{ratio(lens_p50, raw_p50)} #{ratio(lens_max, raw_max)}
      per request      #{fmt(div(lens_p50 - raw_p50, 100))} µs of overhead at p50
    """)
  end

  defp batch_lens(config, request) do
    pendings = for _ <- 1..100, do: elem(LLM.chat_async(config, request), 1)

    for pending <- pendings do
      ref = pending.ref

      receive do
        {^ref, raw} -> {:ok, _} = LLM.handle_reply(pending, raw)
      after
        10_000 -> raise "no reply"
      end
    end

    :ok
  end

  defp batch_raw(sockets, raw_request) do
    sockets
    |> Enum.map(fn socket ->
      Task.async(fn ->
        # The socket belongs to the benchmark process; borrow it.
        raw_round_trip(socket, raw_request)
      end)
    end)
    |> Enum.each(&Task.await/1)
  end

  defp start_server(reply, opts \\ []) do
    {:ok, server} = LoopbackServer.start_link(Keyword.put_new(opts, :record, false))
    LoopbackServer.set_handler(server, fn _ -> reply end)
    server
  end

  defp connect(port) do
    :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false, nodelay: true])
  end

  defp raw_bytes(sent, port) do
    headers =
      sent.headers
      |> Map.put("host", "127.0.0.1:#{port}")
      |> Enum.map(fn {name, value} -> [name, ": ", value, "\r\n"] end)

    IO.iodata_to_binary(["POST ", sent.path, " HTTP/1.1\r\n", headers, "\r\n", sent.body])
  end

  # Writes the request and reads one whole reply (headers + content-length).
  defp raw_round_trip(socket, bytes) do
    :ok = :gen_tcp.send(socket, bytes)
    read_reply(socket, "")
  end

  defp read_reply(socket, acc) do
    {:ok, data} = :gen_tcp.recv(socket, 0, 10_000)
    acc = acc <> data

    case :binary.split(acc, "\r\n\r\n") do
      [head, body] ->
        [_, length] = Regex.run(~r/content-length: (\d+)/i, head)

        if byte_size(body) >= String.to_integer(length),
          do: :ok,
          else: read_reply(socket, acc)

      [_] ->
        read_reply(socket, acc)
    end
  end

  defp percentiles(samples, ps) do
    sorted = Enum.sort(samples)
    n = length(sorted)
    for p <- ps, do: Enum.at(sorted, min(n - 1, max(0, ceil(p / 100 * n) - 1)))
  end

  defp fmt(us), do: us |> Integer.to_string() |> String.pad_leading(8)

  defp ratio(a, b),
    do: :erlang.float_to_binary(a / b, decimals: 2) |> Kernel.<>("x") |> String.pad_leading(8)

  defp env_int(name, default) do
    case System.get_env(name) do
      nil -> default
      value -> String.to_integer(value)
    end
  end
end

Bench.LLMOverhead.run()
