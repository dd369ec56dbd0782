defmodule Beamlens.LoopbackServer do
  @moduledoc """
  A scripted HTTP/1.1 server on 127.0.0.1 for tests: it plays an LLM
  provider (or anything else spoken over HTTP) with replies the test
  decides, records every request, and can misbehave on demand.

  ## Starting

      server = start_supervised!(Beamlens.LoopbackServer)
      url = Beamlens.LoopbackServer.url(server)   # "http://127.0.0.1:PORT"

  Each server listens on a fresh random port. Options: `:handler` (see
  below), `:id` (child id, to start several in one test), `:record`
  (default `true`; `false` keeps no requests and skips decoding their JSON,
  for benchmarks).

  ## Scripting replies

  Replies are taken from a queue, in order; when the queue is empty the
  handler function (`request -> reply`) answers; without one the server
  answers 500 with `"no scripted reply"`.

      LoopbackServer.enqueue(server, [
        %{status: 429, headers: [{"retry-after", "1"}], body: %{"error" => "slow down"}},
        Beamlens.LLMFixtures.text(:anthropic, "all good")
      ])

      LoopbackServer.set_handler(server, fn request -> %{body: %{"echo" => request.json}} end)

  A reply is a map (or keyword list) with:

    * `:status` - default 200;
    * `:headers` - a list of `{name, value}`;
    * `:body` - a binary, or a map/list encoded as JSON (the content type is
      then `application/json` unless given);
    * `:delay` - ms to wait before answering (a slow provider);
    * `:trickle` - `{bytes, interval_ms}`: send the body that many bytes at
      a time with a pause in between (a slow body);
    * `:truncate` - announce the whole body's length but send only this many
      bytes, then close (a cut-off body);
    * `:endless` - a binary: answer with `:status` and `:headers`, no
      `content-length`, then send that binary over and over until the
      client hangs up (a body that never ends);
    * `:close` - `true`: close the connection without answering;
    * `:raw` - iodata sent as is, then the connection is closed.

  ## Inspecting requests

  `requests/1` returns every request received so far, oldest first; each is
  a map with `:method` (`"POST"`), `:path`, `:query` (the raw query string,
  `""` when none), `:headers` (a map with lower-case names), `:body` (the
  raw binary) and `:json` (the decoded body, or `nil` when it is not JSON).
  `await_requests/3` waits until a number of requests has arrived.

  `Beamlens.LoopbackServer.JSON` is the JSON codec used here, available to
  tests that need one (there is no Hex package to provide it).
  """

  use GenServer

  alias Beamlens.LoopbackServer.JSON

  @type reply :: map() | keyword()
  @type request :: %{
          method: String.t(),
          path: String.t(),
          query: String.t(),
          headers: %{String.t() => String.t()},
          body: binary(),
          json: term()
        }

  @doc false
  def child_spec(opts) do
    %{
      id: Keyword.get(opts, :id, __MODULE__),
      start: {__MODULE__, :start_link, [opts]},
      type: :worker
    }
  end

  @doc "Starts a server on a random free port of 127.0.0.1."
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts \\ []), do: GenServer.start_link(__MODULE__, opts)

  @doc "The port the server listens on."
  @spec port(GenServer.server()) :: :inet.port_number()
  def port(server), do: GenServer.call(server, :port)

  @doc "The base URL, `http://127.0.0.1:PORT`."
  @spec url(GenServer.server()) :: String.t()
  def url(server), do: "http://127.0.0.1:#{port(server)}"

  @doc "Appends one reply or a list of replies to the queue."
  @spec enqueue(GenServer.server(), reply() | [reply()]) :: :ok
  def enqueue(server, replies) when is_list(replies) do
    replies = if Keyword.keyword?(replies) and replies != [], do: [replies], else: replies
    GenServer.call(server, {:enqueue, Enum.map(replies, &Map.new/1)})
  end

  def enqueue(server, %{} = reply), do: enqueue(server, [reply])

  @doc "Sets the function that answers when the queue is empty."
  @spec set_handler(GenServer.server(), (request() -> reply())) :: :ok
  def set_handler(server, fun) when is_function(fun, 1),
    do: GenServer.call(server, {:handler, fun})

  @doc "Every request received so far, oldest first."
  @spec requests(GenServer.server()) :: [request()]
  def requests(server), do: GenServer.call(server, :requests)

  @doc "Waits until at least `count` requests have arrived; returns them all."
  @spec await_requests(GenServer.server(), pos_integer(), timeout()) :: [request()]
  def await_requests(server, count, timeout \\ 5_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    do_await(server, count, deadline)
  end

  defp do_await(server, count, deadline) do
    requests = requests(server)

    cond do
      length(requests) >= count ->
        requests

      System.monotonic_time(:millisecond) > deadline ->
        raise "expected #{count} requests, got #{length(requests)}"

      true ->
        Process.sleep(5)
        do_await(server, count, deadline)
    end
  end

  # -- server

  @impl true
  def init(opts) do
    {:ok, listen} =
      :gen_tcp.listen(0, [
        :binary,
        ip: {127, 0, 0, 1},
        active: false,
        reuseaddr: true,
        backlog: 1024,
        nodelay: true
      ])

    {:ok, port} = :inet.port(listen)
    server = self()
    record? = Keyword.get(opts, :record, true)
    acceptor = spawn_link(fn -> accept_loop(listen, server, record?) end)
    :ok = :gen_tcp.controlling_process(listen, acceptor)

    {:ok,
     %{
       listen: listen,
       port: port,
       queue: :queue.new(),
       handler: Keyword.get(opts, :handler),
       requests: [],
       acceptor: acceptor,
       record?: record?
     }}
  end

  @impl true
  def handle_call(:port, _from, state), do: {:reply, state.port, state}

  def handle_call({:enqueue, replies}, _from, state) do
    queue = Enum.reduce(replies, state.queue, &:queue.in/2)
    {:reply, :ok, %{state | queue: queue}}
  end

  def handle_call({:handler, fun}, _from, state), do: {:reply, :ok, %{state | handler: fun}}
  def handle_call(:requests, _from, state), do: {:reply, Enum.reverse(state.requests), state}

  def handle_call({:request, request}, _from, state) do
    state = if state.record?, do: %{state | requests: [request | state.requests]}, else: state

    case :queue.out(state.queue) do
      {{:value, reply}, queue} ->
        {:reply, {:reply, reply}, %{state | queue: queue}}

      {:empty, _} when is_function(state.handler, 1) ->
        {:reply, {:handler, state.handler}, state}

      {:empty, _} ->
        {:reply, {:reply, %{status: 500, body: "no scripted reply"}}, state}
    end
  end

  @impl true
  def terminate(_reason, state) do
    :gen_tcp.close(state.listen)
    :ok
  end

  defp accept_loop(listen, server, record?) do
    case :gen_tcp.accept(listen) do
      {:ok, socket} ->
        # Linked: when the server stops, its connections close with it.
        pid = spawn_link(fn -> receive(do: (:go -> serve(socket, server, record?))) end)
        :ok = :gen_tcp.controlling_process(socket, pid)
        send(pid, :go)
        accept_loop(listen, server, record?)

      {:error, _} ->
        :ok
    end
  end

  # -- one connection (keep-alive: several requests in a row)

  defp serve(socket, server, record?) do
    :inet.setopts(socket, packet: :http_bin)

    with {:ok, request} <- read_request(socket, record?),
         {:ok, decision} <- ask(server, request),
         :keep_open <- answer(socket, decision, request) do
      serve(socket, server, record?)
    else
      _ -> :gen_tcp.close(socket)
    end
  end

  defp ask(server, request) do
    {:ok, GenServer.call(server, {:request, request}, 30_000)}
  catch
    :exit, _ -> :error
  end

  defp read_request(socket, record?) do
    with {:ok, {:http_request, method, {:abs_path, target}, _version}} <-
           :gen_tcp.recv(socket, 0, 30_000),
         {:ok, headers} <- read_headers(socket, %{}) do
      :inet.setopts(socket, packet: :raw)
      length = headers |> Map.get("content-length", "0") |> String.to_integer()

      body =
        case length do
          0 ->
            ""

          n ->
            {:ok, body} = :gen_tcp.recv(socket, n, 30_000)
            body
        end

      {path, query} =
        case String.split(target, "?", parts: 2) do
          [path, query] -> {path, query}
          [path] -> {path, ""}
        end

      {:ok,
       %{
         method: to_string(method),
         path: path,
         query: query,
         headers: headers,
         body: body,
         json: if(record?, do: decode_json(body))
       }}
    else
      _ -> :closed
    end
  end

  defp read_headers(socket, acc) do
    case :gen_tcp.recv(socket, 0, 30_000) do
      {:ok, {:http_header, _, name, _, value}} ->
        name = name |> to_string() |> String.downcase()
        acc = Map.update(acc, name, value, &(&1 <> ", " <> value))
        read_headers(socket, acc)

      {:ok, :http_eoh} ->
        {:ok, acc}

      _ ->
        :closed
    end
  end

  defp decode_json(""), do: nil

  defp decode_json(body) do
    case JSON.decode(body) do
      {:ok, value} -> value
      {:error, _} -> nil
    end
  end

  defp answer(socket, {:handler, fun}, request),
    do: answer(socket, {:reply, fun.(request)}, request)

  defp answer(socket, {:reply, reply}, _request) do
    reply = Map.new(reply)
    if delay = reply[:delay], do: Process.sleep(delay)

    cond do
      reply[:close] ->
        :close

      raw = reply[:raw] ->
        :gen_tcp.send(socket, raw)
        :close

      chunk = reply[:endless] ->
        status = Map.get(reply, :status, 200)

        head = [
          "HTTP/1.1 #{status} #{reason_phrase(status)}\r\n",
          Enum.map(Map.get(reply, :headers, []), fn {name, value} ->
            [name, ": ", to_string(value), "\r\n"]
          end),
          "connection: close\r\n\r\n"
        ]

        with :ok <- :gen_tcp.send(socket, head), do: send_forever(socket, chunk)
        :close

      true ->
        send_reply(socket, reply)
    end
  end

  defp send_reply(socket, reply) do
    {body, content_type} = encode_body(Map.get(reply, :body, ""))
    headers = Map.get(reply, :headers, [])
    status = Map.get(reply, :status, 200)

    headers =
      if content_type &&
           not Enum.any?(headers, &(String.downcase(elem(&1, 0)) == "content-type")),
         do: [{"content-type", content_type} | headers],
         else: headers

    head = [
      "HTTP/1.1 #{status} #{reason_phrase(status)}\r\n",
      Enum.map(headers, fn {name, value} -> [name, ": ", to_string(value), "\r\n"] end),
      "content-length: #{byte_size(body)}\r\n\r\n"
    ]

    case reply do
      %{truncate: bytes} ->
        :gen_tcp.send(socket, [head, binary_part(body, 0, min(bytes, byte_size(body)))])
        :close

      %{trickle: {bytes, interval}} ->
        :gen_tcp.send(socket, head)
        trickle(socket, body, bytes, interval)

      _ ->
        case :gen_tcp.send(socket, [head, body]) do
          :ok -> :keep_open
          _ -> :close
        end
    end
  end

  defp send_forever(socket, chunk) do
    case :gen_tcp.send(socket, chunk) do
      :ok -> send_forever(socket, chunk)
      error -> error
    end
  end

  defp trickle(_socket, "", _bytes, _interval), do: :keep_open

  defp trickle(socket, body, bytes, interval) do
    size = min(bytes, byte_size(body))
    <<chunk::binary-size(size), rest::binary>> = body

    case :gen_tcp.send(socket, chunk) do
      :ok ->
        if rest != "", do: Process.sleep(interval)
        trickle(socket, rest, bytes, interval)

      _ ->
        :close
    end
  end

  defp encode_body(body) when is_binary(body), do: {body, nil}
  defp encode_body(body), do: {JSON.encode!(body), "application/json"}

  defp reason_phrase(200), do: "OK"
  defp reason_phrase(400), do: "Bad Request"
  defp reason_phrase(401), do: "Unauthorized"
  defp reason_phrase(403), do: "Forbidden"
  defp reason_phrase(404), do: "Not Found"
  defp reason_phrase(429), do: "Too Many Requests"
  defp reason_phrase(500), do: "Internal Server Error"
  defp reason_phrase(503), do: "Service Unavailable"
  defp reason_phrase(_), do: "Status"
end

defmodule Beamlens.LoopbackServer.JSON do
  @moduledoc """
  A small, strict JSON codec for tests (RFC 8259).

  `decode/1` returns objects as maps with string keys and `null` as `nil`.
  `encode!/1` accepts maps (atom or string keys), lists, strings, numbers,
  booleans, `nil` and other atoms (as strings).
  """

  @doc "Decodes a JSON document."
  @spec decode(binary()) :: {:ok, term()} | {:error, String.t()}
  def decode(binary) when is_binary(binary) do
    {value, rest} = value(skip(binary))

    case skip(rest) do
      "" -> {:ok, value}
      other -> {:error, "unexpected trailing data: #{String.slice(other, 0, 20)}"}
    end
  catch
    {:json_error, message} -> {:error, message}
  end

  @doc "Decodes a JSON document or raises."
  @spec decode!(binary()) :: term()
  def decode!(binary) do
    case decode(binary) do
      {:ok, value} -> value
      {:error, message} -> raise ArgumentError, "invalid JSON: #{message}"
    end
  end

  defp skip(<<c, rest::binary>>) when c in [?\s, ?\t, ?\n, ?\r], do: skip(rest)
  defp skip(rest), do: rest

  defp value(<<"{", rest::binary>>), do: object(skip(rest), %{})
  defp value(<<"[", rest::binary>>), do: array(skip(rest), [])
  defp value(<<"\"", rest::binary>>), do: string(rest, [])
  defp value(<<"true", rest::binary>>), do: {true, rest}
  defp value(<<"false", rest::binary>>), do: {false, rest}
  defp value(<<"null", rest::binary>>), do: {nil, rest}
  defp value(<<c, _::binary>> = bin) when c == ?- or c in ?0..?9, do: number(bin)
  defp value(""), do: throw({:json_error, "unexpected end of input"})
  defp value(<<c, _::binary>>), do: throw({:json_error, "unexpected character #{<<c>>}"})

  defp object(<<"}", rest::binary>>, acc) when acc == %{}, do: {acc, rest}

  defp object(<<"\"", rest::binary>>, acc) do
    {key, rest} = string(rest, [])

    case skip(rest) do
      <<":", rest::binary>> ->
        {value, rest} = value(skip(rest))
        acc = Map.put(acc, key, value)

        case skip(rest) do
          <<",", rest::binary>> -> object(skip(rest), acc)
          <<"}", rest::binary>> -> {acc, rest}
          _ -> throw({:json_error, "expected , or } in object"})
        end

      _ ->
        throw({:json_error, "expected : after object key"})
    end
  end

  defp object(_, _), do: throw({:json_error, "expected a string key"})

  defp array(<<"]", rest::binary>>, []), do: {[], rest}

  defp array(bin, acc) do
    {value, rest} = value(bin)

    case skip(rest) do
      <<",", rest::binary>> -> array(skip(rest), [value | acc])
      <<"]", rest::binary>> -> {Enum.reverse([value | acc]), rest}
      _ -> throw({:json_error, "expected , or ] in array"})
    end
  end

  defp string(<<"\"", rest::binary>>, acc), do: {IO.iodata_to_binary(Enum.reverse(acc)), rest}

  defp string(<<"\\", c, rest::binary>>, acc) when c in [?", ?\\, ?/],
    do: string(rest, [<<c>> | acc])

  defp string(<<"\\b", rest::binary>>, acc), do: string(rest, ["\b" | acc])
  defp string(<<"\\f", rest::binary>>, acc), do: string(rest, ["\f" | acc])
  defp string(<<"\\n", rest::binary>>, acc), do: string(rest, ["\n" | acc])
  defp string(<<"\\r", rest::binary>>, acc), do: string(rest, ["\r" | acc])
  defp string(<<"\\t", rest::binary>>, acc), do: string(rest, ["\t" | acc])

  defp string(<<"\\u", hi::binary-size(4), "\\u", lo::binary-size(4), rest::binary>>, acc)
       when binary_part(hi, 0, 1) in ["d", "D"] do
    with {high, ""} when high in 0xD800..0xDBFF <- Integer.parse(hi, 16),
         {low, ""} when low in 0xDC00..0xDFFF <- Integer.parse(lo, 16) do
      code = 0x10000 + (high - 0xD800) * 0x400 + (low - 0xDC00)
      string(rest, [<<code::utf8>> | acc])
    else
      # Not a surrogate pair: decode the first escape on its own.
      _ -> single_escape(hi, "\\u" <> lo <> rest, acc)
    end
  end

  defp string(<<"\\u", hex::binary-size(4), rest::binary>>, acc),
    do: single_escape(hex, rest, acc)

  defp string(<<"\\", _::binary>>, _), do: throw({:json_error, "invalid escape"})

  defp string(<<c, _::binary>>, _) when c < 0x20,
    do: throw({:json_error, "control character in string"})

  defp string(bin, acc) do
    case :binary.match(bin, ["\"", "\\"]) do
      {pos, _} ->
        <<chunk::binary-size(pos), rest::binary>> = bin
        if chunk =~ ~r/[\x00-\x1f]/, do: throw({:json_error, "control character in string"})
        string(rest, [chunk | acc])

      :nomatch ->
        throw({:json_error, "unterminated string"})
    end
  end

  defp single_escape(hex, rest, acc) do
    case Integer.parse(hex, 16) do
      {code, ""} when code not in 0xD800..0xDFFF -> string(rest, [<<code::utf8>> | acc])
      _ -> throw({:json_error, "invalid \\u escape"})
    end
  end

  defp number(bin) do
    case Regex.run(~r/^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/, bin) do
      [text | groups] ->
        rest = binary_part(bin, byte_size(text), byte_size(bin) - byte_size(text))
        float? = Enum.any?(groups, &(&1 != "" and String.match?(&1, ~r/^[.eE]/)))
        {if(float?, do: to_float(text), else: String.to_integer(text)), rest}

      nil ->
        throw({:json_error, "invalid number"})
    end
  end

  defp to_float(text) do
    # "1e5" is valid JSON but not a valid Elixir float literal.
    text = if text =~ ".", do: text, else: String.replace(text, ~r/[eE]/, ".0e", global: false)
    String.to_float(text)
  end

  @doc "Encodes a term as JSON."
  @spec encode!(term()) :: binary()
  def encode!(term), do: IO.iodata_to_binary(encode(term))

  defp encode(nil), do: "null"
  defp encode(true), do: "true"
  defp encode(false), do: "false"
  defp encode(atom) when is_atom(atom), do: encode(Atom.to_string(atom))
  defp encode(int) when is_integer(int), do: Integer.to_string(int)
  defp encode(float) when is_float(float), do: :erlang.float_to_binary(float, [:short])
  defp encode(string) when is_binary(string), do: [?", escape(string), ?"]

  defp encode(%{} = map) do
    pairs = Enum.map(map, fn {key, value} -> [encode(to_string(key)), ?:, encode(value)] end)
    [?{, Enum.intersperse(pairs, ?,), ?}]
  end

  defp encode(list) when is_list(list),
    do: [?[, Enum.intersperse(Enum.map(list, &encode/1), ?,), ?]]

  defp escape(string) do
    for <<c::utf8 <- string>>, into: "" do
      case c do
        ?" -> "\\\""
        ?\\ -> "\\\\"
        ?\n -> "\\n"
        ?\r -> "\\r"
        ?\t -> "\\t"
        c when c < 0x20 -> "\\u" <> String.pad_leading(Integer.to_string(c, 16), 4, "0")
        c -> <<c::utf8>>
      end
    end
  end
end
