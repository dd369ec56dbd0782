defmodule HostApp.DashboardTest do
  # BeamLens's LiveDashboard page, mounted by the host app's router the way
  # the README says, served by the real endpoint on 127.0.0.1: first as
  # the HTML a GET returns, then in headless Chromium (test/browser).
  use Beamlens.WatcherCase, async: false

  alias Beamlens.{LLMFixtures, LoopbackServer}
  alias Beamlens.Domain.Exception.ExceptionStore
  alias HostApp.Repo

  require Logger

  @moduletag timeout: 240_000

  @api_key "sk-ant-api03-Dashb0ardSecretKey-7Qx2"

  # The scripted model: watchers' checks end at once; an investigation
  # gets an answer.
  defp model(request) do
    tools = Enum.map(request.json["tools"] || [], & &1["name"])

    if "answer" in tools,
      do:
        LLMFixtures.tool_calls(:anthropic, [
          {"answer",
           %{
             "summary" => "Orders crash in a worker that matches on the repo configuration.",
             "hypothesis" => "A deploy changed the replica's hostname."
           }}
        ]),
      else: LLMFixtures.tool_calls(:anthropic, [{"done", %{}}])
  end

  setup do
    server = start_provider([])
    LoopbackServer.set_handler(server, &model/1)
    start_supervised!({ExceptionStore, new_group_grace_ms: 300})

    # The page's default instance: `Beamlens`.
    start_beamlens(Beamlens,
      # The watchers the app runs BeamLens with.
      watchers: HostApp.Application.watchers(),
      interval: 250,
      provider: LLMFixtures.config(:anthropic, server, api_key: @api_key)
    )

    for name <- names(), do: await_ticks(Beamlens, name, 3, 30_000)
    {:ok, {_ip, port}} = HostAppWeb.Endpoint.server_info(:http)
    %{url: "http://127.0.0.1:#{port}/dashboard/beamlens"}
  end

  defp names,
    do: Enum.map(HostApp.Application.watchers(), fn w -> if is_list(w), do: w[:name], else: w end)

  # A worker crashes with the repo's configuration, password included, in
  # its MatchError; the log gets the database URL.
  defp inject_fault do
    Logger.error("orders: lost the database at #{System.fetch_env!("BEAMLENS_PG_URL")}")

    for _ <- 1..3 do
      {:ok, _} =
        Task.Supervisor.start_child(HostApp.Tasks, fn ->
          [hostname: "db.replica.internal"] = Repo.config()
        end)
    end
  end

  defp secrets do
    password = Keyword.fetch!(Repo.config(), :password)
    [password, @api_key, System.fetch_env!("BEAMLENS_PG_URL")]
  end

  defp get(url) do
    {:ok, {{_, status, _}, _headers, body}} =
      :httpc.request(:get, {String.to_charlist(url), []}, [timeout: 30_000], body_format: :binary)

    {status, body}
  end

  test "the page lists every watcher and the alert, and nothing secret", %{url: url} do
    inject_fault()
    alert = assert_alert(:exception, "new_exception_group", 30_000)

    {200, html} = get(url)

    for name <- names() do
      assert html =~ ~s(id="beamlens-watcher-#{name}"), "no row for the watcher #{name}"
    end

    assert html =~ ~s(data-anomaly-type="new_exception_group")
    assert html =~ Phoenix.HTML.html_escape(alert.summary) |> Phoenix.HTML.safe_to_string()
    # A model is configured: the page says so, and shows the provider.
    assert html =~ "anthropic (claude-test)"

    for secret <- secrets() do
      refute html =~ secret, "the page shows a secret: #{String.slice(secret, 0, 6)}…"
    end
  end

  test "LiveView's websocket is refused to another origin", %{url: url} do
    uri = URI.parse(url)
    # The first line of the answer to a websocket upgrade from `origin`.
    upgrade = fn origin ->
      {:ok, tcp} =
        :gen_tcp.connect(~c"127.0.0.1", uri.port, [:binary, packet: :line, active: false])

      :ok =
        :gen_tcp.send(tcp, [
          "GET /live/websocket?vsn=2.0.0 HTTP/1.1\r\n",
          "host: 127.0.0.1:#{uri.port}\r\norigin: #{origin}\r\n",
          "connection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n",
          "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ])

      {:ok, line} = :gen_tcp.recv(tcp, 0, 10_000)
      :gen_tcp.close(tcp)
      line |> String.split(" ") |> Enum.at(1)
    end

    assert upgrade.("http://evil.example") == "403"
    assert upgrade.("http://127.0.0.1:#{uri.port}") == "101"
  end

  @tag :browser
  test "in Chromium: connects, shows the watchers, then the fault's alert live", %{url: url} do
    browser = Application.fetch_env!(:host_app, :browser)
    dir = Path.expand("../../tmp", __DIR__)
    File.mkdir_p!(dir)
    screenshot = Path.join(dir, "dashboard.png")
    html_file = Path.join(dir, "dashboard.html")

    port =
      Port.open({:spawn_executable, browser[:python]}, [
        :binary,
        :exit_status,
        {:line, 65_536},
        args: [
          Path.expand("../browser/dashboard.py", __DIR__),
          "--url",
          url,
          "--chromium",
          browser[:chromium],
          "--watchers",
          Enum.join(names(), ","),
          "--anomaly",
          "new_exception_group",
          "--pause",
          "gc",
          "--screenshot",
          screenshot,
          "--html",
          html_file,
          "--top",
          Path.join(dir, "dashboard-top.png")
        ]
      ])

    assert_line(port, "READY", 120_000)
    inject_fault()
    Port.command(port, "FAULT\n")
    done = assert_line(port, "DONE", 200_000)
    assert_receive {^port, {:exit_status, 0}}, 30_000

    %{"states" => states, "alert" => alert, "detail" => detail, "report" => report} =
      Jason.decode!(done)

    assert Map.keys(states) |> Enum.sort() == names() |> Enum.map(&to_string/1) |> Enum.sort()
    assert alert =~ "new_exception_group"
    assert detail =~ "Observation" and detail =~ "Evidence"
    assert report =~ "Why are orders crashing?"
    assert report =~ "Orders crash in a worker"

    html = File.read!(html_file)

    for secret <- secrets() do
      refute html =~ secret, "the page shows a secret: #{String.slice(secret, 0, 6)}…"
    end

    assert File.stat!(screenshot).size > 10_000

    # The Pause button paused the watcher itself.
    gc = Enum.find(Beamlens.status().watchers, &(&1.name == :gc))
    assert gc.paused
    assert html =~ "Paused :gc."
  end

  # Reads the script's lines until one starts with `tag`; returns the rest.
  defp assert_line(port, tag, timeout) do
    receive do
      {^port, {:data, {:eol, line}}} ->
        cond do
          String.starts_with?(line, tag) -> String.trim_leading(line, tag) |> String.trim()
          String.starts_with?(line, "FAILED") -> flunk("the browser test failed: #{line}")
          true -> assert_line(port, tag, timeout)
        end

      {^port, {:exit_status, status}} ->
        flunk("the browser script exited with #{status} before #{tag}")
    after
      timeout -> flunk("no #{tag} from the browser script in #{timeout} ms")
    end
  end
end

defmodule HostApp.DashboardOptionsTest do
  use ExUnit.Case, async: true

  test "the page's options are checked when the router is compiled" do
    assert {:ok, %{instance: Beamlens, pause: true}, [process: Beamlens]} =
             Beamlens.Dashboard.init([])

    assert {:ok, %{instance: MyLens, pause: false}, _} =
             Beamlens.Dashboard.init(instance: MyLens, pause: false)

    assert_raise ArgumentError, ~r/unknown Beamlens.Dashboard option :bogus; known/, fn ->
      Beamlens.Dashboard.init(bogus: 1)
    end

    assert_raise ArgumentError, ~r/:pause a boolean, got: \[pause: "yes"\]/, fn ->
      Beamlens.Dashboard.init(pause: "yes")
    end
  end
end
