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

    log_store =
      if Enum.any?(opts[:watchers], &(&1[:domain_module] in log_domains())),
        do: [Beamlens.LogStore],
        else: []

    exception_store =
      if Enum.any?(opts[:watchers], &(&1[:domain_module] == Beamlens.Domain.Exception)),
        do: [Beamlens.Domain.Exception.ExceptionStore],
        else: []

    sup_tracker =
      if Enum.any?(opts[:watchers], &(&1[:domain_module] == Beamlens.Domain.Sup)),
        do: [Beamlens.Domain.Sup.Tracker],
        else: []

    children =
      [
        {Registry, keys: :unique, name: Module.concat(instance, Registry)},
        {Task.Supervisor, name: Module.concat(instance, TaskSupervisor)}
      ] ++
        log_store ++
        exception_store ++
        sup_tracker ++
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
    scope = Keyword.get(opts, :pg_scope, :beamlens_pg)

    summarizer =
      if llm_config,
        do: [summarizer: {Beamlens.Coordinator.LLMSummarizer, llm_config: llm_config}],
        else: []

    coordinator_opts = Keyword.merge(summarizer, Keyword.merge(opts, name: name, pg_scope: scope))

    children = [
      %{id: {:pg, scope}, start: {__MODULE__, :start_pg, [scope]}},
      {Beamlens.Coordinator, coordinator_opts}
    ]

    {children, {Beamlens.Coordinator, name}}
  end

  @doc false
  # One :pg scope per node, shared by every BeamLens instance.
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

  defp log_domains, do: [Beamlens.Domain.Logger, Beamlens.Domain.Exception]
end
