defmodule HostApp.SecretsTest do
  # The database password is in the repo's configuration and in the URL;
  # connection errors, logs and crashes all come near it. Whatever the
  # model is shown goes over HTTP to the provider: capture every request
  # body on a loopback provider and look for the password there.
  use Beamlens.WatcherCase, async: false

  import HostApp.Case

  alias Beamlens.{LLMFixtures, LoopbackServer}
  alias Beamlens.Domain.Exception.ExceptionStore
  alias HostApp.Repo

  require Logger

  @moduletag timeout: 120_000
  @wrong_password "Wr0ng-Passw0rd-7f3a9c"

  # The scripted model reads everything its domain offers, then ends the check.
  @investigate """
  local r = {}
  if ecto then r.errors = ecto.errors(10); r.stats = ecto.stats(); r.connections = ecto.connections() end
  if logger then r.logs = logger.recent(50, "all") end
  if exception then r.recent = exception.recent(10); r.groups = exception.top_groups(5) end
  return r
  """

  defp model(request) do
    last = List.last(request.json["messages"])

    tool_result? =
      is_list(last["content"]) and Enum.any?(last["content"], &(&1["type"] == "tool_result"))

    if tool_result?,
      do: LLMFixtures.tool_calls(:anthropic, [{"done", %{}}]),
      else: LLMFixtures.tool_calls(:anthropic, [{"execute_lua", %{"code" => @investigate}}])
  end

  # A worker that pattern-matches the repo configuration and crashes with
  # all of it in the MatchError, password included.
  defp crash_with_config do
    {:ok, _} =
      Task.Supervisor.start_child(HostApp.Tasks, fn ->
        [hostname: "db.replica.internal"] = Repo.config()
      end)
  end

  test "the database password never reaches the provider", %{instance: instance} do
    fresh_store()
    password = Keyword.fetch!(Repo.config(), :password)
    url = System.fetch_env!("BEAMLENS_PG_URL")
    assert url =~ password

    server = start_provider([])
    LoopbackServer.set_handler(server, &model/1)
    start_supervised!({ExceptionStore, new_group_grace_ms: 300})

    start_beamlens(instance,
      watchers: [[name: :ecto, domain_module: HostApp.EctoDomain], :logger, :exception],
      provider: LLMFixtures.config(:anthropic, server),
      llm: :always
    )

    # A second pool of the same repo with a wrong password: its connections
    # fail and its queries are dropped.
    bad =
      start_supervised!(
        {Repo,
         name: nil,
         url: String.replace(url, password, @wrong_password),
         pool_size: 1,
         queue_target: 20,
         queue_interval: 50,
         backoff_min: 50,
         backoff_max: 200}
      )

    start_load(2, fn ->
      Repo.put_dynamic_repo(bad)
      {:error, _} = Repo.query("SELECT 1")
    end)

    Logger.error("orders: lost the database at #{url}")
    for _ <- 1..3, do: crash_with_config()

    # Wait until the model has been shown each kind of failure.
    bodies =
      wait_for(
        fn ->
          bodies = Enum.map(LoopbackServer.requests(server), & &1.body)
          all = Enum.join(bodies, "\n")

          (all =~ "invalid_password" and all =~ "MatchError" and
             all =~ "DBConnection.ConnectionError" and all =~ "lost the database") && bodies
        end,
        60_000
      )

    # The failures reached the model with their secrets removed.
    all = Enum.join(bodies, "\n")
    assert all =~ "[REDACTED]"

    for secret <- [password, @wrong_password] do
      leaks = Enum.filter(bodies, &String.contains?(&1, secret))
      assert leaks == [], "a request body holds the password: #{inspect(Enum.take(leaks, 1))}"
    end
  end
end
