defmodule Beamlens.LLMLoopbackServerTest do
  # The shared test server itself: its JSON codec and its recording.
  use ExUnit.Case, async: true

  alias Beamlens.LoopbackServer
  alias Beamlens.LoopbackServer.JSON

  describe "JSON" do
    test "decodes every JSON type" do
      assert JSON.decode(~s({"a": [1, -2.5, 3e2, true, false, null], "b": {"c": "d"}, "": ""})) ==
               {:ok, %{"a" => [1, -2.5, 300.0, true, false, nil], "b" => %{"c" => "d"}, "" => ""}}

      assert JSON.decode!(~s("tab\\t quote\\" slash\\/ \\u00e9 \\ud83d\\ude00 \\ud7ff")) ==
               "tab\t quote\" slash/ é 😀 \u{D7FF}"

      assert JSON.decode!("[]") == [] and JSON.decode!("{}") == %{}
    end

    test "rejects invalid documents" do
      for bad <- [
            ~s({"a": 1),
            ~s([1,]),
            ~s({"a" 1}),
            "01",
            ~s("unterminated),
            ~s("\\x"),
            "nul",
            "[1] 2"
          ] do
        assert {:error, _} = JSON.decode(bad), "accepted #{bad}"
      end
    end

    test "round-trips what it encodes" do
      value = %{
        "text" => "line\nbreak \"quoted\" \u0001 é",
        "n" => [1, 2.5, nil, true],
        "empty" => %{}
      }

      assert value |> JSON.encode!() |> JSON.decode!() == value
      assert JSON.encode!(%{key: :atom}) == ~s({"key":"atom"})
    end
  end

  describe "server" do
    test "records requests and answers from the queue, then the handler" do
      server = start_supervised!(LoopbackServer)

      LoopbackServer.enqueue(server, %{
        status: 201,
        headers: [{"x-test", "1"}],
        body: %{"queued" => true}
      })

      LoopbackServer.set_handler(server, fn request -> %{body: %{"path" => request.path}} end)

      {:ok, socket} =
        :gen_tcp.connect({127, 0, 0, 1}, LoopbackServer.port(server), [:binary, active: false])

      body = ~s({"x": 1})

      for path <- ["/first?a=1", "/second"] do
        :ok =
          :gen_tcp.send(socket, [
            "POST #{path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n",
            "Content-Length: #{byte_size(body)}\r\n\r\n",
            body
          ])
      end

      replies = read_until(socket, "/second", "")
      assert replies =~ "HTTP/1.1 201"
      assert replies =~ "x-test: 1"
      assert replies =~ ~s({"queued":true})
      assert replies =~ ~s({"path":"/second"})

      assert [first, second] = LoopbackServer.await_requests(server, 2)

      assert %{method: "POST", path: "/first", query: "a=1", json: %{"x" => 1}, body: ^body} =
               first

      assert first.headers["content-type"] == "application/json"
      assert second.path == "/second"
    end

    test "answers 500 when nothing is scripted" do
      server = start_supervised!(LoopbackServer)

      {:ok, socket} =
        :gen_tcp.connect({127, 0, 0, 1}, LoopbackServer.port(server), [:binary, active: false])

      :ok = :gen_tcp.send(socket, "GET / HTTP/1.1\r\nHost: test\r\n\r\n")
      assert read_until(socket, "no scripted reply", "") =~ "HTTP/1.1 500"
    end
  end

  defp read_until(socket, marker, acc) do
    if acc =~ marker do
      acc
    else
      {:ok, data} = :gen_tcp.recv(socket, 0, 2_000)
      read_until(socket, marker, acc <> data)
    end
  end
end
