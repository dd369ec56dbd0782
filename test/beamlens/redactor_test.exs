defmodule Beamlens.RedactorTest do
  # configure!/1 changes the VM-wide redactor: run alone.
  use ExUnit.Case, async: false

  alias Beamlens.{LLMFixtures, LoopbackServer, Redactor}
  alias Beamlens.Domain.Exception.ExceptionStore
  alias Beamlens.Watcher.Agent

  doctest Beamlens.Redactor

  # Realistic secrets, each with the text it sits in.
  @corpus [
    {"Anthropic key", "calling with sk-ant-api03-R2D2c3poBB8x_Yq9-ZmW4kLpNvT7sQe1HjUa6Cf0Xd5 now",
     "sk-ant-api03-R2D2c3poBB8x_Yq9-ZmW4kLpNvT7sQe1HjUa6Cf0Xd5"},
    {"OpenAI project key", "OPENAI_API_KEY is sk-proj-4fGh7JkL9mNb2VcX5zAs8DqW1eRt3YuI6oP0lK",
     "sk-proj-4fGh7JkL9mNb2VcX5zAs8DqW1eRt3YuI6oP0lK"},
    {"Stripe live key", "Stripe.API.key = sk_live_51HqLyjWDarjtT1zdp7dcXYZ",
     "sk_live_51HqLyjWDarjtT1zdp7dcXYZ"},
    {"AWS access key id", "aws configure set aws_access_key_id AKIAIOSFODNN7EXAMPLE",
     "AKIAIOSFODNN7EXAMPLE"},
    {"AWS secret in key=value", "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"},
    {"GitHub token",
     "git clone https://x:ghp_16C7e42F292c6912E7710c838347Ae178B4a@github.com/o/r",
     "ghp_16C7e42F292c6912E7710c838347Ae178B4a"},
    {"GitHub fine-grained token",
     "token github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
     "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz"},
    {"Slack bot token", "slack: xoxb-2048-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
     "xoxb-2048-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"},
    {"Google API key", "maps key AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI",
     "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI"},
    {"JWT",
     "session eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c expired",
     "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"},
    {"opaque bearer token", "upstream said 401 for Bearer 8f14e45fceea167a5a36dedd4bea2543",
     "8f14e45fceea167a5a36dedd4bea2543"},
    {"Authorization header", ~s(headers: [{"authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l"}]),
     "YWxhZGRpbjpvcGVuc2VzYW1l"},
    {"password in URL", "could not connect to ecto://app:Tr0ub4dor-3@db.internal:5432/app_prod",
     "Tr0ub4dor-3"},
    {"password key=value", "login failed: user=bob password=correct-horse-battery-staple",
     "correct-horse-battery-staple"},
    {"password in inspected map", ~s(%{"password" => "hunter2!!", "username" => "bob"}),
     "hunter2!!"},
    {"password in inspected pair", ~s([{"db_password", "pgpass-77"}]), "pgpass-77"},
    {"secret in JSON", ~s({"client_secret":"7Fjfp0ZBr1KtDRbnfVdmIw","scope":"read"}),
     "7Fjfp0ZBr1KtDRbnfVdmIw"},
    {"secret_key_base", "secret_key_base: Kq2Vn8vz0Yf4l9Wd3pRt", "Kq2Vn8vz0Yf4l9Wd3pRt"},
    {"cookie", "cookie: _my_app_key=SFMyNTY.g3QAAAABbQAAAAtfY3NyZl90b2tlbg; theme=dark",
     "SFMyNTY.g3QAAAABbQAAAAtfY3NyZl90b2tlbg"},
    {"email", "password reset sent to alice.smith+billing@example.co.uk",
     "alice.smith+billing@example.co.uk"},
    {"Visa card", "charge declined for card 4111 1111 1111 1111 (visa)", "4111 1111 1111 1111"},
    {"Mastercard", "card=5555-5555-5555-4444", "5555-5555-5555-4444"},
    {"Amex", "amex 378282246310005 failed", "378282246310005"},
    {"camelCase key", ~s(config: %{apiKey: "k9Fq2LmZ8xWv"}) <> " apiKey=k9Fq2LmZ8xWv",
     "k9Fq2LmZ8xWv"},
    {"camelCase session id", "sessionId: 5f0c1e9a7b3d", "5f0c1e9a7b3d"},
    {"mixed-case key", "DB_PassWord=Pg-Adm1n-Zz", "Pg-Adm1n-Zz"},
    {"escaped JSON", ~S({\"password\":\"esc4ped-pw\",\"user\":\"bob\"}), "esc4ped-pw"},
    {"AWS secret key alone",
     "creds AKIAIOSFODNN7EXAMPLE / wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLE12",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLE12"},
    {"user:pass outside a URL", "redis at default:r3d1s-pw@cache.internal:6379 refused",
     "r3d1s-pw"},
    {"password with @ and / in a URL", "postgres://app:p@ss/w0rd@db.internal/app failed",
     "p@ss/w0rd"},
    {"Azure connection string",
     "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=Zm9vYmFy+YmF6cXV4/MTIzNDU2Nzg5MA==;EndpointSuffix=core.windows.net",
     "Zm9vYmFy+YmF6cXV4/MTIzNDU2Nzg5MA=="},
    {"Anthropic short key", "key sk-ant-api03-Zx9Yw8Vu", "sk-ant-api03-Zx9Yw8Vu"},
    {"Slack token in text", "SLACK=xoxb-123456789012-AbCdEfGh", "xoxb-123456789012-AbCdEfGh"},
    {"GitLab token", "token=glpat-AbCdEfGhIjKlMnOpQrSt", "glpat-AbCdEfGhIjKlMnOpQrSt"},
    {"Hugging Face token", "HF hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345",
     "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345"},
    {"dotted card number", "card 4111.1111.1111.1111 declined", "4111.1111.1111.1111"},
    {"plural secret key", "secrets: s3cr3t-one", "s3cr3t-one"},
    {"list under a secret key", ~s(tokens: ["tok-aaa111", "tok-bbb222"]), "tok-aaa111"},
    {"tuple under a secret key", ~s(credentials: {"admin", "adm1n-pw"}), "adm1n-pw"},
    {"Basic auth value", "sent Basic YWxhZGRpbjpvcGVuc2VzYW1l to upstream",
     "YWxhZGRpbjpvcGVuc2VzYW1l"},
    {"Plug req_cookies", ~s(req_cookies: %{"_app_key" => "SFMyNTY.cookie-value"}),
     "SFMyNTY.cookie-value"},
    {"curl -u", "curl -u admin:curl-s3cret https://x", "curl-s3cret"},
    {"private key",
     "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
     "b3BlbnNzaC1rZXktdjEAAAAA"}
  ]

  describe "default rules" do
    for {name, text, secret} <- @corpus do
      test "remove #{name}" do
        redacted = Redactor.redact(unquote(text))
        refute redacted =~ unquote(secret), redacted
        assert redacted =~ ~r/\[(REDACTED|EMAIL|CARD|REDACTED PRIVATE KEY)\]/
      end
    end

    test "are idempotent: redacted text stays as it is" do
      for {_name, text, _secret} <- @corpus do
        once = Redactor.redact(text)
        assert Redactor.redact(once) == once
      end
    end

    test "keep the context around a secret" do
      assert Redactor.redact("login failed: user=bob password=hunter2 from 10.0.0.5") ==
               "login failed: user=bob password=[REDACTED] from 10.0.0.5"

      assert Redactor.redact("could not connect to ecto://app:pw@db.internal:5432/app_prod") ==
               "could not connect to ecto://app:[REDACTED]@db.internal:5432/app_prod"

      assert Redactor.redact(~s(Authorization: Bearer abcdefghijklmnop)) ==
               "Authorization: Bearer [REDACTED]"

      assert Redactor.redact(~s({"refresh_token":"abc123xyz","ok":true})) ==
               ~s({"refresh_token":"[REDACTED]","ok":true})
    end

    test "leave ordinary operational text alone" do
      for text <- [
            ~s|SELECT u0."id", u0."email" FROM "users" AS u0 WHERE (u0."id" = $1) LIMIT 20|,
            "GenServer #PID<0.123.0> terminating: ** (RuntimeError) boom",
            "MyApp.Accounts.get_user!/1 (lib/my_app/accounts.ex:42)",
            "input_tokens: 1200, output_tokens: 35, tokens_per_second: 4.5",
            "request took 1718000000000 ns at 2024-06-01T12:30:45Z, order 4111111111111112",
            "https://example.com:8443/health?check=1",
            "node beamlens@127.0.0.1 is up; password authentication failed for user \"app\"",
            "basic authentication is disabled"
          ] do
        assert Redactor.redact(text) == text
      end
    end

    test "keep node names that look like addresses" do
      node = Atom.to_string(node())
      assert Redactor.redact("leader is #{node}") == "leader is #{node}"
      assert Redactor.redact("mail ops@example.com") == "mail [EMAIL]"
    end

    test "card numbers need a network prefix and a valid Luhn checksum" do
      assert Redactor.card?("4111 1111 1111 1111")
      assert Redactor.card?("6011111111111117")
      refute Redactor.card?("4111 1111 1111 1112")
      refute Redactor.card?("1234567812345670")
      refute Redactor.card?("411111111111")
    end
  end

  describe "data" do
    test "values of secret keys are masked in maps, keywords and pairs" do
      data = %{
        "Authorization" => "Bearer x",
        :api_key => 12_345,
        "user" => %{email: "bob@example.com", name: "Bob"},
        :nested => [password: "pw", count: 3, db_password: ~c"secret"],
        :pair => {"access_token", "abc"},
        :credentials => %{username: "app", password: "pw"},
        :tokens => 5,
        :enabled => true
      }

      assert Redactor.redact(data) == %{
               "Authorization" => "[REDACTED]",
               :api_key => "[REDACTED]",
               "user" => %{email: "[EMAIL]", name: "Bob"},
               :nested => [password: "[REDACTED]", count: 3, db_password: "[REDACTED]"],
               :pair => {"access_token", "[REDACTED]"},
               :credentials => %{username: "app", password: "[REDACTED]"},
               :tokens => 5,
               :enabled => true
             }

      assert Redactor.redact(%{"PassWord" => "x", "X-Api-Key" => "y", "Set-Cookie" => "z"}) ==
               %{
                 "PassWord" => "[REDACTED]",
                 "X-Api-Key" => "[REDACTED]",
                 "Set-Cookie" => "[REDACTED]"
               }
    end

    test "atoms holding a secret become redacted strings; other terms pass" do
      pid = self()
      ref = make_ref()

      assert Redactor.redact([
               :"worker_for_alice@example.com",
               :ok,
               nil,
               pid,
               ref,
               1.5,
               MyApp.Repo
             ]) ==
               ["[EMAIL]", :ok, nil, pid, ref, 1.5, MyApp.Repo]
    end

    test "camelCase, plural, list, tuple and cookie keys are masked" do
      assert Redactor.redact(%{
               "apiKey" => "k",
               :dbPassword => "p",
               "DB_PassWord" => "p",
               :secrets => ["a", "b"],
               :tokens => {"a", 7},
               :api_keys => [%{"value" => "v"}],
               :req_cookies => %{"_app_key" => "c", "theme" => "dark"},
               :input_tokens => 1200
             }) == %{
               "apiKey" => "[REDACTED]",
               :dbPassword => "[REDACTED]",
               "DB_PassWord" => "[REDACTED]",
               :secrets => ["[REDACTED]", "[REDACTED]"],
               :tokens => {"[REDACTED]", 7},
               :api_keys => [%{"value" => "v"}],
               :req_cookies => %{"_app_key" => "[REDACTED]", "theme" => "[REDACTED]"},
               :input_tokens => 1200
             }
    end

    test "structs stay structs" do
      now = DateTime.utc_now()
      assert Redactor.redact(%{at: now}) == %{at: now}

      assert %URI{userinfo: "[REDACTED]"} =
               Redactor.redact(URI.parse("https://bob:pw@example.com"))
    end

    test "improper lists and deep nesting are bounded" do
      assert Redactor.redact([1 | "sk-ant-api03-abcdefghijklmnopqrstuvwxyz"]) == [
               1 | "[REDACTED]"
             ]

      deep = Enum.reduce(1..100, "x", fn _, acc -> [acc] end)
      assert inspect(Redactor.redact(deep)) =~ "[nested too deep]"
    end

    test "redact_text renders other terms first" do
      assert Redactor.redact_text({:error, "alice@example.com"}) == ~s({:error, "[EMAIL]"})
    end
  end

  describe "configuration" do
    setup do
      on_exit(fn -> Redactor.configure!([]) end)
    end

    test "extra patterns, keys and a function" do
      {:ok, redactor} =
        Redactor.new(
          patterns: [~r/ACME-\d{6}/, {~r/tenant=(\w+)/, "tenant=?"}],
          keys: ["iban", :national_id],
          function: &String.replace(&1, "Bob", "B.")
        )

      assert Redactor.redact("order ACME-123456 tenant=globex by Bob", redactor) ==
               "order [REDACTED] tenant=? by B."

      assert Redactor.redact(%{"NATIONAL_ID" => "x", iban: "DE89370400440532013000"}, redactor) ==
               %{"NATIONAL_ID" => "[REDACTED]", iban: "[REDACTED]"}

      assert Redactor.redact("iban=DE89370400440532013000", redactor) == "iban=[REDACTED]"
    end

    test "a failing function fails closed" do
      {:ok, raising} = Redactor.new(function: fn _ -> raise "bug" end)
      assert Redactor.redact(["hello"], raising) == ["[REDACTION FAILED]"]

      {:ok, wrong} = Redactor.new(function: fn _ -> :not_a_string end)
      assert Redactor.redact("hello", wrong) == "[REDACTION FAILED]"
    end

    test "defaults can be turned off; custom keys still apply" do
      {:ok, bare} = Redactor.new(defaults: false, keys: ["pin"])

      assert Redactor.redact("mail alice@example.com pin=1234", bare) ==
               "mail alice@example.com pin=[REDACTED]"
    end

    test "invalid options are refused with the key and the expected type" do
      assert {:error, %ArgumentError{message: message}} = Redactor.new(patterns: ["sk-"])
      assert message =~ "expected :redact option :patterns to be a list of regexes"
      assert {:error, %ArgumentError{message: message}} = Redactor.new(function: fn -> :ok end)
      assert message =~ ":function to be a function of arity 1"
      assert {:error, %ArgumentError{message: message}} = Redactor.new(keys: [1])
      assert message =~ ":keys to be a list of strings or atoms"
      assert {:error, %ArgumentError{message: message}} = Redactor.new(defaults: :no)
      assert message =~ ":defaults to be a boolean"
      assert {:error, %ArgumentError{message: message}} = Redactor.new(:nope)
      assert message =~ "expected :redact to be a keyword list"
    end

    test "configure!/1 sets the VM's redactor; inspect shows no patterns" do
      :ok = Redactor.configure!(patterns: [~r/internal-\d+/])
      assert Redactor.redact("host internal-42") == "host [REDACTED]"

      assert inspect(Redactor.current()) ==
               "#Beamlens.Redactor<defaults: true, patterns: 1, keys: 0, function: false>"
    end

    test "the :redact option of BeamLens is validated and applied at start" do
      assert_raise ArgumentError,
                   ~r/invalid value for BeamLens option :redact: expected a keyword list/,
                   fn ->
                     Beamlens.child_spec(redact: [patterns: "x"])
                   end

      instance = Module.concat(__MODULE__, "Instance#{System.unique_integer([:positive])}")

      start_supervised!(
        {Beamlens, name: instance, watchers: [], provider: :none, redact: [keys: ["shoe_size"]]}
      )

      assert Redactor.redact(%{shoe_size: 44}) == %{shoe_size: "[REDACTED]"}
    end
  end

  describe "where BeamLens applies it" do
    test "every snapshot and tool result the model sees is redacted" do
      text = Agent.encode(%{"note" => "mail alice@example.com", "password" => "pw"}, 1_000)
      assert text =~ "[EMAIL]"
      refute text =~ "alice@example.com"
      refute text =~ ~s("pw")

      assert Agent.snapshot_result("x-1", %{url: "postgres://u:secretpw@h/db"}) =~
               "postgres://u:[REDACTED]@h/db"
    end

    test "Lua values, printed output and errors are redacted" do
      {:ok, result} =
        Beamlens.Lua.eval(
          ~S"""
          print("key: " .. "sk-ant-" .. "api03-" .. string.rep("Zx9", 10))
          return {mail = "bob" .. "@example.com"}
          """,
          %{},
          result: :full
        )

      {text, false} = Agent.lua_result({:ok, result}, Beamlens.Domain.Beam)
      assert text =~ "[REDACTED]" and text =~ "[EMAIL]"
      refute text =~ "sk-ant-api03"
      refute text =~ "bob@example.com"

      {:error, error} = Beamlens.Lua.eval(~S[error("token=" .. "abcdef0123")])
      {text, true} = Agent.lua_result({:error, error}, Beamlens.Domain.Beam)
      assert text =~ "token=[REDACTED]"
      refute text =~ "abcdef0123"
    end

    test "log messages are redacted when read" do
      start_supervised!(Beamlens.LogStore)
      require Logger
      Logger.error("payment failed for alice@example.com with card 4111111111111111")
      Process.sleep(20)

      assert [%{message: "payment failed for [EMAIL] with card [CARD]"} | _] =
               Beamlens.LogStore.recent(5, :error)

      # Searching matches the redacted text, so it cannot probe for a secret.
      assert Beamlens.LogStore.search("alice@", 5) == []
      assert [_ | _] = Beamlens.LogStore.search("[EMAIL]", 5)
    end
  end

  describe "end to end" do
    @describetag timeout: 60_000

    # Secrets planted where the watchers look: logs, exceptions (message
    # and stack trace arguments), SQL text, parameters and database errors,
    # a registered process name, and Lua output.
    @secrets [
      "alice.smith@example.com",
      "correct-horse-battery-staple",
      "sk-ant-api03-R2D2c3poBB8x_Yq9-ZmW4kLpNvT7sQe1HjUa6Cf0Xd5",
      "8f14e45fceea167a5a36dedd4bea2543",
      "4111 1111 1111 1111",
      "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
      "S3cr3t-pg-pass",
      "bob.jones@example.org",
      "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
      "param-secret-9931",
      "carol.white@example.net",
      "AKIAIOSFODNN7EXAMPLE",
      "5555555555554444"
    ]

    defmodule Charger do
      use GenServer
      def init(state), do: {:ok, state}

      def handle_cast(:charge, state) do
        raise "charge failed for card 4111 1111 1111 1111 of alice.smith@example.com"
        {:noreply, state}
      end
    end

    setup do
      server = start_supervised!(LoopbackServer)
      LoopbackServer.set_handler(server, &scripted_model/1)
      %{server: server}
    end

    test "no planted secret reaches the provider", %{server: server} do
      require Logger
      import Beamlens.EctoCase

      start_store(window_ms: 1_000, slots: 5)

      handler = "redactor-e2e-tool-calls-#{System.unique_integer([:positive])}"
      test = self()

      :telemetry.attach(
        handler,
        [:beamlens, :watcher, :tool_call],
        fn _event, _measurements, meta, _ -> send(test, {:tool_call, meta}) end,
        nil
      )

      on_exit(fn -> :telemetry.detach(handler) end)

      mailer = spawn_link(fn -> Process.sleep(:infinity) end)
      Process.register(mailer, :"mailer_carol.white@example.net")
      :persistent_term.put({__MODULE__, :mailer}, inspect(mailer))

      instance = Module.concat(__MODULE__, "E2E#{System.unique_integer([:positive])}")

      Beamlens.WatcherCase.start_beamlens(instance,
        watchers: [
          :logger,
          :exception,
          :beam,
          [name: :ecto, domain_module: Beamlens.EctoCase.Domain]
        ],
        provider: LLMFixtures.config(:anthropic, server),
        # The budget is VM-wide; leave it as other tests expect it.
        token_budget: :infinity,
        llm: :always,
        interval: 100
      )

      Logger.error(
        "login failed for alice.smith@example.com password=correct-horse-battery-staple " <>
          "key sk-ant-api03-R2D2c3poBB8x_Yq9-ZmW4kLpNvT7sQe1HjUa6Cf0Xd5"
      )

      Logger.error("upstream 401 with Authorization: Bearer 8f14e45fceea167a5a36dedd4bea2543")

      {:ok, charger} = GenServer.start(Charger, %{})
      GenServer.cast(charger, :charge)

      ExceptionStore.report_event(%{
        kind: :error,
        level: :error,
        reason: %RuntimeError{
          message:
            "session eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c rejected"
        },
        stacktrace: [
          {MyApp.Repo, :connect, ["ecto://app:S3cr3t-pg-pass@db.internal/app_prod"],
           [file: ~c"lib/repo.ex", line: 3]}
        ],
        datetime: DateTime.utc_now(),
        metadata: %{}
      })

      emit_query(Beamlens.EctoCase.Repo,
        query: 300,
        sql: "SELECT * FROM tokens WHERE value = 'ghp_16C7e42F292c6912E7710c838347Ae178B4a'",
        params: ["param-secret-9931"]
      )

      emit_query(Beamlens.EctoCase.Repo,
        result: %Beamlens.EctoCase.DBError{
          message:
            "ERROR 23505 (unique_violation) Key (email)=(bob.jones@example.org) already exists."
        },
        params: ["param-secret-9931"]
      )

      # Investigations that started after everything was planted.
      planted = length(LoopbackServer.requests(server))
      requests = await_investigations(server, ~w(logger exception beam ecto), planted)
      bodies = Enum.map_join(requests, "\n", & &1.body)

      decoded =
        inspect(Enum.map(requests, & &1.json), limit: :infinity, printable_limit: :infinity)

      for secret <- @secrets do
        refute bodies =~ secret, "#{secret} reached the provider"
        refute decoded =~ secret, "#{secret} reached the provider"
      end

      # Tool-call telemetry carries the model's arguments and the results,
      # redacted too (the beam script holds a secret of its own).
      tool_calls = for {:tool_call, meta} <- Process.info(self(), :messages) |> elem(1), do: meta
      assert tool_calls != []
      seen = inspect(tool_calls, limit: :infinity, printable_limit: :infinity)
      refute seen =~ "lua-arg-secret-1"
      assert seen =~ "password=[REDACTED]"

      for secret <- @secrets do
        refute seen =~ secret, "#{secret} reached tool-call telemetry"
      end

      # The planted data did reach the model, scrubbed.
      for seen <- [
            "login failed for [EMAIL] password=[REDACTED]",
            "Authorization: Bearer [REDACTED]",
            "charge failed for card [CARD] of [EMAIL]",
            "session [REDACTED] rejected",
            "MyApp.Repo.connect(<binary, ",
            "SELECT * FROM tokens WHERE value = ?",
            "Key (email)=([EMAIL]) already exists.",
            "[EMAIL]",
            "printed:"
          ] do
        assert decoded =~ seen, "expected #{inspect(seen)} in a request"
      end
    end
  end

  # A model that investigates every check with its domain's functions, then
  # finishes.
  def scripted_model(%{json: %{"system" => system, "messages" => messages}}) do
    last = List.last(messages)

    answered? =
      is_list(last["content"]) and Enum.any?(last["content"], &(&1["type"] == "tool_result"))

    case Regex.run(~r/watching the (\w+) domain/, system) do
      [_, domain] when not answered? ->
        LLMFixtures.tool_calls(:anthropic, [
          {"execute_lua", %{"code" => lua(domain)}},
          {"take_snapshot", %{}}
        ])

      _ ->
        LLMFixtures.tool_calls(:anthropic, [{"done", %{}}])
    end
  end

  def scripted_model(_request), do: LLMFixtures.text(:anthropic, "summary")

  defp lua("logger"),
    do: ~S|print(logger.recent(10, "all")[1].message) return logger.search("failed", 5)|

  defp lua("exception") do
    ~S"""
    local groups = exception.top_groups(5)
    local details = {}
    for i, g in ipairs(groups) do details[i] = exception.group(g.id) end
    return {groups = groups, details = details, recent = exception.recent(10)}
    """
  end

  defp lua("ecto"), do: ~S[return {slow = ecto.slow_queries(5), errors = ecto.errors(5)}]

  defp lua("beam") do
    pid = :persistent_term.get({__MODULE__, :mailer}, "#PID<0.0.0>")

    ~s[local note = "password=lua-arg-secret-1" print("AKIA" .. "IOSFODNN7EXAMPLE") ] <>
      ~s[return {mailer = beam.process_info("#{pid}"), card = "5555" .. "5555" .. "5555" .. "4444"}]
  end

  defp lua(_), do: "return 1"

  # Waits until the model has seen the results of an investigation in each
  # domain, in a request after the first `skip` ones; returns all requests.
  defp await_investigations(server, domains, skip, timeout \\ 20_000) do
    deadline = System.monotonic_time(:millisecond) + timeout

    Stream.repeatedly(fn ->
      requests = LoopbackServer.requests(server)

      done =
        for %{json: %{"system" => system, "messages" => messages}} <- Enum.drop(requests, skip),
            tool_result?(List.last(messages)),
            [_, domain] <- [Regex.run(~r/watching the (\w+) domain/, system)],
            into: MapSet.new(),
            do: domain

      cond do
        MapSet.subset?(MapSet.new(domains), done) ->
          {:ok, requests}

        System.monotonic_time(:millisecond) > deadline ->
          flunk("investigated only #{inspect(MapSet.to_list(done))}")

        true ->
          Process.sleep(50) && nil
      end
    end)
    |> Enum.find_value(fn
      {:ok, requests} -> requests
      nil -> nil
    end)
  end

  defp tool_result?(%{"content" => content}) when is_list(content),
    do: Enum.any?(content, &(&1["type"] == "tool_result"))

  defp tool_result?(_), do: false
end
