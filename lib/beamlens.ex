defmodule Beamlens do
  @moduledoc """
  BeamLens watches a running Elixir application from the inside.

  Add it to your supervision tree:

      children = [
        {Beamlens, watchers: [:beam, :ets, :gc, :logger, :ports, :sup, :system]}
      ]

  Each watcher takes a snapshot of its domain every `:interval`, lets a Rust
  anomaly gate judge the numbers against learned baselines and hard limits,
  and fires `Beamlens.Alert`s through `:telemetry` (see `Beamlens.Telemetry`).
  When a model is configured, the watcher wakes it up to investigate with
  read-only Lua and to write the alert; with `provider: :none`, or when the
  token budget is spent, the gate's deterministic alerts still fire.

  BeamLens stays out of the host's way: every snapshot and callback is
  read-only and bounded, slow work never holds a scheduler, its processes
  are not linked to yours, and its own restarts are bounded: if it keeps
  failing it stops (its child spec is `restart: :temporary`) instead of
  taking your supervisor down with it.

  ## Options

  #{Beamlens.Options.docs()}

  ## Per-watcher options

  A watcher is a built-in name or a keyword list such as
  `[name: :ecto, domain_module: MyApp.EctoDomain]`. Keyword lists take:

  #{Beamlens.Options.watcher_docs()}
  """

  use Supervisor

  require Logger

  alias Beamlens.Options

  @version Mix.Project.config()[:version]

  @doc """
  The child spec: `{Beamlens, opts}`. Options are validated here, so a
  mistake fails at boot with a message naming the option.
  """
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    opts = Options.validate!(opts)

    %{
      id: opts[:name],
      start: {__MODULE__, :start_link, [opts]},
      type: :supervisor,
      restart: :temporary
    }
  end

  @doc """
  Starts BeamLens. Prefer adding `{Beamlens, opts}` to a supervision tree.
  """
  @spec start_link(keyword()) :: Supervisor.on_start()
  def start_link(opts) do
    opts = Options.validate!(opts)

    if Beamlens.Runtime.loaded?() do
      Supervisor.start_link(__MODULE__, opts, name: opts[:name])
    else
      # Never fail the host's boot because of BeamLens.
      {:error, error} = Beamlens.Runtime.status()
      Logger.error("BeamLens is not starting: #{Exception.message(error)}")
      :ignore
    end
  end

  @doc """
  The watchers of a running BeamLens instance with their current state.

      [%{name: :beam, state: :healthy, reason: "...", ticks: 12, alerts_fired: 0, ...}]
  """
  @spec watchers(atom()) :: [map()]
  def watchers(instance \\ __MODULE__) do
    registry = Module.concat(instance, Registry)

    registry
    |> Registry.select([{{{:watcher, :"$1"}, :"$2", :_}, [], [{{:"$1", :"$2"}}]}])
    |> Enum.sort()
    |> Enum.flat_map(fn {_name, pid} ->
      try do
        [Beamlens.Watcher.info(pid)]
      catch
        :exit, _ -> []
      end
    end)
  end

  ## Operating BeamLens (see the README section "Operating BeamLens")

  @doc """
  What every watcher is doing now, the coordinator, the providers and the
  token budget.

      %{
        node: :"app@host",
        watchers: [%{name: :beam, state: :healthy, reason: "...", mode: :model,
                     mode_reason: nil, paused: false, paused_until: nil,
                     last_tick_at: ~U[...], next_tick_at: ~U[...], firing: [],
                     last_check: %{at: ~U[...], reason: "gate findings", outcome: :done, tokens: 1830},
                     alerts_fired: 2,
                     tokens: %{last_hour: %{input: 1500, output: 330},
                               total: %{input: 9000, output: 2000}, estimated: false}, ...}],
        coordinator: %{leader?: true, insights: 1, tokens: %{...}},
        providers: [%{provider: :anthropic, model: "claude-haiku-4-5", breaker: :closed}],
        budget: %{limit: 250_000, used_this_hour: 1830, left: 248_170}
      }

  `:mode` is `:rules_only` with a `:mode_reason` when no provider is
  configured, the token budget is spent, or every provider's circuit
  breaker is open. Breaker states are as BeamLens last saw them in replies
  (see `Beamlens.Usage.breaker/3`). Options: `:instance` (default `Beamlens`).
  """
  @spec status(keyword()) :: map()
  def status(opts \\ []) do
    instance = instance!(opts, [])

    infos =
      instance
      |> watcher_pids()
      |> Enum.flat_map(fn {_name, pid} ->
        try do
          [GenServer.call(pid, :status, 5_000)]
        catch
          :exit, _ -> []
        end
      end)

    Beamlens.Status.build(instance, infos)
  end

  @doc """
  The alerts of the last `:history_size` (default 500) that fired, newest
  first, with their occurrences, escalations and when they were last seen.
  Kept in memory whether or not a telemetry handler was attached.

  Filters: `:watcher`, `:severity`, `:anomaly_type`, `:since` (a
  `DateTime`: alerts last seen at or after it), `:limit`. Options:
  `:instance`.

      Beamlens.alerts(since: DateTime.add(DateTime.utc_now(), -3600), severity: :critical)
  """
  @spec alerts(keyword()) :: [Beamlens.Alert.t()]
  def alerts(opts \\ []) do
    instance = instance!(opts, [:watcher, :severity, :anomaly_type, :since, :limit])
    Beamlens.History.alerts(Beamlens.History.name(instance), Keyword.delete(opts, :instance))
  end

  @doc """
  The coordinator's insights, newest first: those it emitted (kept like
  alerts) and those it holds now (on every node, not only the leader), the
  latest version of each. Filters: `:since` (updated at or after), `:limit`.
  Options: `:instance`.
  """
  @spec insights(keyword()) :: [Beamlens.Insight.t()]
  def insights(opts \\ []) do
    instance = instance!(opts, [:since, :limit])
    filters = Keyword.delete(opts, :instance)
    kept = Beamlens.History.insights(Beamlens.History.name(instance), filters)

    live =
      case Beamlens.Status.coordinator_name(instance) do
        nil ->
          []

        name ->
          try do
            Beamlens.Coordinator.insights(name)
          catch
            :exit, _ -> []
          end
      end

    (kept ++ live)
    |> Enum.group_by(& &1.id)
    |> Enum.map(fn {_, versions} -> Enum.max_by(versions, & &1.version) end)
    |> Enum.sort_by(&DateTime.to_unix(&1.updated_at, :microsecond), :desc)
    |> Beamlens.History.filter(filters, & &1.updated_at)
  end

  @doc """
  Pauses a watcher: it keeps taking snapshots, so its gate keeps learning
  baselines and `status/1` stays current, but it raises nothing (no alert,
  no model check). A check already running finishes without firing the
  gate's alerts. Options: `for:` milliseconds (default: until `resume/2`),
  `:instance`.

      Beamlens.pause(:logger, for: :timer.minutes(15))
  """
  @spec pause(atom(), keyword()) :: :ok | {:error, Exception.t()}
  def pause(watcher, opts \\ []) do
    case Keyword.get(opts, :for, :infinity) do
      ms when (is_integer(ms) and ms > 0) or ms == :infinity ->
        call_watcher(opts, [:for], watcher, {:pause, ms})

      other ->
        {:error,
         %Beamlens.Error{
           kind: :bad_argument,
           message:
             "expected for: to be a positive number of milliseconds, got: #{inspect(other)}"
         }}
    end
  end

  @doc "Resumes a paused watcher. Options: `:instance`."
  @spec resume(atom(), keyword()) :: :ok | {:error, Exception.t()}
  def resume(watcher, opts \\ []), do: call_watcher(opts, [], watcher, :resume)

  @doc """
  Makes a watcher take a snapshot now and judge it; with a model (and
  budget), the model checks it too, whatever the gate found. A paused
  watcher takes the snapshot but raises nothing. Options: `:instance`.
  """
  @spec check_now(atom(), keyword()) :: :ok | {:error, Exception.t()}
  def check_now(watcher, opts \\ []), do: call_watcher(opts, [], watcher, :check_now)

  @doc """
  Investigates now, across the chosen watchers, and returns a
  `Beamlens.Report`: fresh snapshots judged by the gates, the key figures
  of each domain, findings with evidence and entities, the alerts they
  amount to, and, with a model, its answer to `question` after at most
  `:max_iterations` turns of read-only Lua. Without a model (none
  configured, budget spent, provider down) the report holds the facts and
  says that no model was used. See `Beamlens.Investigation`.

  One investigation runs at a time per node; another gets
  `{:error, %Beamlens.Error{kind: :busy}}`. Options:

  #{Beamlens.Investigation.Options.docs()}

      {:ok, report} = Beamlens.investigate("why is memory growing?")
      IO.puts(Beamlens.Report.to_text(report))
  """
  @spec investigate(String.t() | nil, keyword()) ::
          {:ok, Beamlens.Report.t()} | {:error, Exception.t()}
  def investigate(question \\ nil, opts \\ []) do
    {instance, opts} = Keyword.pop(opts, :instance, __MODULE__)
    Beamlens.Investigation.run(instance, question, opts)
  end

  @doc """
  Prints what BeamLens sees now (`status/1` and the latest alerts) as text
  short enough for a terminal. For IEx and
  `bin/my_app rpc 'Beamlens.report()'`. Options: `:device` (default
  `:stdio`), `:instance`.
  """
  @spec report(keyword()) :: :ok
  def report(opts \\ []) do
    {device, opts} = Keyword.pop(opts, :device, :stdio)
    instance = instance!(opts, [])

    if Process.whereis(Beamlens.History.name(instance)) do
      status = status(instance: instance)
      since = DateTime.add(DateTime.utc_now(), -3_600, :second)
      recent = alerts(instance: instance, since: since, limit: 50)
      latest = insights(instance: instance, since: since, limit: 1)
      IO.write(device, Beamlens.Report.format_status(status, recent, latest))
    else
      IO.write(device, "BeamLens (#{inspect(instance)}) is not running on #{node()}.\n")
    end
  end

  defp instance!(opts, allowed) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError, "expected the options to be a keyword list, got: #{inspect(opts)}"
    end

    case Enum.find(Keyword.keys(opts), &(&1 not in [:instance | allowed])) do
      nil ->
        :ok

      key when allowed == [] ->
        raise ArgumentError, "unknown option #{inspect(key)}; known: :instance"

      _key ->
        :ok
    end

    Keyword.get(opts, :instance, __MODULE__)
  end

  defp watcher_pids(instance) do
    instance
    |> Module.concat(Registry)
    |> Registry.select([{{{:watcher, :"$1"}, :"$2", :_}, [], [{{:"$1", :"$2"}}]}])
    |> Enum.sort()
  rescue
    ArgumentError -> []
  end

  defp call_watcher(opts, allowed, watcher, message) do
    case Enum.find(Keyword.keys(opts), &(&1 not in [:instance | allowed])) do
      nil ->
        instance = Keyword.get(opts, :instance, __MODULE__)

        case List.keyfind(watcher_pids(instance), watcher, 0) do
          {_, pid} ->
            try do
              GenServer.call(pid, message, 5_000)
            catch
              :exit, reason ->
                {:error,
                 %Beamlens.Error{
                   kind: :unavailable,
                   message:
                     "watcher #{inspect(watcher)} did not answer: #{inspect(reason, limit: 5)}"
                 }}
            end

          nil ->
            running = instance |> watcher_pids() |> Enum.map_join(", ", &inspect(elem(&1, 0)))

            {:error,
             %Beamlens.Error{
               kind: :not_found,
               message:
                 "no watcher named #{inspect(watcher)} in #{inspect(instance)}; running: #{if running == "", do: "none", else: running}"
             }}
        end

      key ->
        {:error,
         %Beamlens.Error{
           kind: :bad_argument,
           message:
             "unknown option #{inspect(key)}; known: #{Enum.map_join([:instance | allowed], ", ", &inspect/1)}"
         }}
    end
  end

  @doc """
  The version of BeamLens.

      iex> Beamlens.version() =~ ~r/^\\d+\\.\\d+\\.\\d+/
      true
  """
  @spec version() :: String.t()
  def version, do: @version

  @impl true
  def init(opts) do
    instance = opts[:name]
    if Keyword.has_key?(opts, :redact), do: Beamlens.Redactor.configure!(opts[:redact])
    llm_config = llm_config(opts[:provider])
    if llm_config, do: Beamlens.LLM.set_budget(opts[:token_budget])

    {coordinator_children, coordinator} = coordinator(instance, opts[:coordinator], llm_config)

    watchers =
      Enum.map(opts[:watchers], fn watcher ->
        {Beamlens.Watcher,
         Keyword.merge(watcher,
           instance: instance,
           coordinator: coordinator,
           llm_config: llm_config
         )}
      end)

    children =
      [
        {Registry,
         keys: :unique,
         name: Module.concat(instance, Registry),
         meta: [llm_config: llm_config, coordinator: coordinator]},
        {Task.Supervisor, name: Module.concat(instance, TaskSupervisor)},
        {Beamlens.History, instance: instance, size: opts[:history_size]},
        Beamlens.Usage
      ] ++
        domain_stores(opts[:watchers]) ++
        coordinator_children ++
        [
          %{
            id: :watchers,
            type: :supervisor,
            start:
              {Supervisor, :start_link,
               [watchers, [strategy: :one_for_one, max_restarts: 10, max_seconds: 60]]}
          }
        ]

    Supervisor.init(children, strategy: :one_for_one, max_restarts: 5, max_seconds: 60)
  end

  defp coordinator(_instance, false, _llm_config), do: {[], nil}

  defp coordinator(instance, opts, llm_config) do
    name = Keyword.get(opts, :name, Module.concat(instance, Coordinator))
    scope = Keyword.get(opts, :pg_scope, Beamlens.Coordinator.Options.defaults()[:pg_scope])

    summarizer =
      if llm_config,
        do: [summarizer: {Beamlens.Coordinator.LLMSummarizer, llm_config: llm_config}],
        else: []

    coordinator_opts =
      Keyword.merge(summarizer, Keyword.merge(opts, name: name, pg_scope: scope))
      |> Keyword.put(:history, Beamlens.History.name(instance))

    children = [
      %{id: {:pg, scope}, start: {__MODULE__, :start_pg, [scope]}},
      {Beamlens.Coordinator, coordinator_opts}
    ]

    {children, {Beamlens.Coordinator, name}}
  end

  @doc false
  # One :pg scope per node, shared by every BeamLens instance.
  @spec start_pg(atom()) :: {:ok, pid()} | :ignore | {:error, term()}
  def start_pg(scope) do
    case :pg.start_link(scope) do
      {:error, {:already_started, _}} -> :ignore
      other -> other
    end
  end

  # The model configuration, or nil for rules-only mode. A configuration
  # error (typically a missing API key) is reported once, here, and BeamLens
  # runs rules-only instead of crash-looping.
  defp llm_config(:none), do: nil

  defp llm_config(provider) do
    chain =
      provider
      |> List.wrap()
      |> then(fn list -> if Keyword.keyword?(list), do: [list], else: list end)
      |> Enum.map(fn
        name when is_atom(name) -> [provider: name]
        opts -> opts
      end)
      |> Enum.map(&default_model/1)

    config = if match?([_], chain), do: hd(chain), else: chain

    case Beamlens.LLM.Config.new(config) do
      {:ok, config} ->
        config

      {:error, error} ->
        Logger.error(
          "BeamLens: no usable model (#{Exception.message(error)}); watchers run in rules-only mode. " <>
            "Configure a provider or pass provider: :none to silence this."
        )

        nil
    end
  end

  # The quick start only sets ANTHROPIC_API_KEY: give Anthropic a default
  # model (small and fast; checks are frequent). Other providers name theirs.
  @default_anthropic_model "claude-haiku-4-5"

  defp default_model(opts) do
    if opts[:provider] == :anthropic,
      do: Keyword.put_new(opts, :model, @default_anthropic_model),
      else: opts
  end

  # The stores the watchers' domains declare (Beamlens.Domain.stores/1),
  # each once.
  defp domain_stores(watchers) do
    watchers
    |> Enum.flat_map(fn watcher ->
      domain = watcher[:domain_module]

      if Code.ensure_loaded?(domain) and function_exported?(domain, :stores, 1),
        do: domain.stores(watcher),
        else: []
    end)
    |> Enum.map(&Supervisor.child_spec(&1, []))
    |> Enum.uniq_by(& &1.id)
  end
end
