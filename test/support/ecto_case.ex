defmodule Beamlens.EctoCase do
  @moduledoc false
  # Ecto is not installable here: these stand-ins have exactly the shapes
  # BeamLens relies on. A repo module defines config/0 (with the
  # :telemetry_prefix Ecto puts there) and __adapter__/0; query events are
  # emitted as Ecto SQL emits them: `prefix ++ [:query]`, measurements in
  # native time units, metadata with :type, :repo, :query, :params,
  # :cast_params, :source, :result, :options and :stacktrace.

  defmodule Repo do
    @moduledoc false
    def config do
      [
        otp_app: :beamlens,
        telemetry_prefix: [:beamlens_test, :repo],
        pool_size: 10,
        timeout: 15_000,
        hostname: "db.internal",
        password: "fake-repo-password-do-not-leak"
      ]
    end

    def __adapter__, do: Beamlens.EctoCase.Adapter

    # Ecto SQL's Repo.query!/3: runs SQL, emits the query event (with the
    # caller's :telemetry_options as metadata :options) and returns a
    # Postgrex-like result. Canned results stand in for the database; the
    # process registered as :beamlens_test_repo_listener hears of each call.
    def query!(sql, params, opts) do
      if pid = Process.whereis(:beamlens_test_repo_listener),
        do: send(pid, {:repo_query, sql, opts})

      result = Beamlens.EctoCase.canned_result(sql)

      :telemetry.execute(
        config()[:telemetry_prefix] ++ [:query],
        %{query_time: 1_000, total_time: 1_000},
        %{
          type: :ecto_sql_query,
          repo: __MODULE__,
          query: sql,
          params: params,
          cast_params: params,
          source: nil,
          result: {:ok, result},
          options: Keyword.get(opts, :telemetry_options, []),
          stacktrace: nil
        }
      )

      result
    end
  end

  defmodule Interval do
    @moduledoc false
    # Shaped like Postgrex.Interval: a struct that prints itself.
    defstruct secs: 0

    defimpl String.Chars do
      def to_string(%{secs: secs}), do: "#{secs} seconds"
    end
  end

  @doc false
  def canned_result(sql) do
    cond do
      sql =~ "long_running" ->
        %{
          columns: ["pid", "duration", "query"],
          rows: [
            [
              4242,
              %Interval{secs: 754},
              "UPDATE users SET api_token = 'tok_live_9f8e7d' WHERE email = 'bob@example.com'"
            ]
          ],
          num_rows: 1
        }

      sql =~ "blocking" ->
        %{
          columns: ["blocked_pid", "blocking_statement", "blocking_pid", "blocked_statement"],
          rows: [
            [
              4243,
              "UPDATE orders SET status = 'paid', card = '4111111111111111' WHERE id = 7",
              4242,
              "UPDATE orders SET status = 'shipped' WHERE id = 7"
            ]
          ],
          num_rows: 1
        }

      true ->
        rows = for i <- 1..30, do: ["table_#{i}", 1.0 - i / 1000]
        %{columns: ["name", "ratio"], rows: rows, num_rows: 30}
    end
  end

  defmodule OtherRepo do
    @moduledoc false
    def config, do: [otp_app: :beamlens, telemetry_prefix: [:beamlens_test, :other_repo]]
    def __adapter__, do: Beamlens.EctoCase.Adapter
  end

  defmodule SilentRepo do
    @moduledoc false
    # An Ecto-like repo whose configuration has no telemetry prefix.
    def config, do: [otp_app: :beamlens, telemetry_prefix: nil]
    def __adapter__, do: Beamlens.EctoCase.Adapter
  end

  defmodule Adapter do
    @moduledoc false
  end

  defmodule Domain do
    @moduledoc false
    use Beamlens.Domain.Ecto, repo: Beamlens.EctoCase.Repo
  end

  defmodule DBError do
    @moduledoc false
    # Shaped like Postgrex.Error: an exception whose message names the problem.
    defexception [:message, :postgres]
  end

  @doc """
  Emits one query event for `repo` the way Ecto SQL does. Durations in
  milliseconds: `:query`, `:queue`, `:decode` (`nil` leaves the measurement
  out); `:sql`, `:source`, `:result` (`:ok` or an exception for `{:error, e}`),
  `:params`.
  """
  def emit_query(repo \\ Repo, opts \\ []) do
    query = Keyword.get(opts, :query, 2)
    queue = Keyword.get(opts, :queue, 0.05)
    decode = Keyword.get(opts, :decode, 0.02)

    measurements =
      [query_time: query, queue_time: queue, decode_time: decode, idle_time: 100]
      |> Enum.reject(fn {_, v} -> is_nil(v) end)
      |> Map.new(fn {k, ms} -> {k, native(ms)} end)

    total =
      Enum.sum(for k <- [:query_time, :queue_time, :decode_time], do: Map.get(measurements, k, 0))

    result =
      case Keyword.get(opts, :result, :ok) do
        :ok -> {:ok, %{num_rows: 1, rows: [[1]], columns: ["id"]}}
        %{__exception__: true} = error -> {:error, error}
      end

    sql =
      Keyword.get(
        opts,
        :sql,
        ~s|SELECT u0."id", u0."email" FROM "users" AS u0 WHERE (u0."id" = $1)|
      )

    :telemetry.execute(
      repo.config()[:telemetry_prefix] ++ [:query],
      Map.put(measurements, :total_time, total),
      %{
        type: :ecto_sql_query,
        repo: repo,
        query: sql,
        params: Keyword.get(opts, :params, [42]),
        cast_params: Keyword.get(opts, :params, [42]),
        source: Keyword.get(opts, :source, "users"),
        result: result,
        options: [],
        stacktrace: nil
      }
    )
  end

  defp native(ms), do: System.convert_time_unit(round(ms * 1_000), :microsecond, :native)

  @doc """
  Starts a process under the test supervisor that emits a query for `repo`
  every `:every` ms (default 5) with the options of `emit_query/2`; change
  them with `set_load/2`.
  """
  def start_load(repo \\ Repo, opts \\ []) do
    ExUnit.Callbacks.start_supervised!(%{
      id: {:ecto_load, repo},
      start: {Task, :start_link, [fn -> load(repo, opts) end]}
    })
  end

  @doc "Changes the queries a load process emits."
  def set_load(pid, opts), do: send(pid, {:set, opts})

  defp load(repo, opts) do
    opts =
      receive do
        {:set, new} -> new
      after
        0 -> opts
      end

    emit_query(repo, opts)
    Process.sleep(Keyword.get(opts, :every, 5))
    load(repo, opts)
  end

  @doc "Starts the registry and the telemetry store of `repo` under the test supervisor."
  def start_store(opts \\ []) do
    ExUnit.Callbacks.start_supervised!(
      {Registry, keys: :unique, name: Beamlens.Domain.Ecto.Registry}
    )

    ExUnit.Callbacks.start_supervised!(
      {Beamlens.Domain.Ecto.TelemetryStore, Keyword.put_new(opts, :repo, Repo)}
    )
  end
end
