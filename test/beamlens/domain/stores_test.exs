defmodule Beamlens.Domain.StoresTest do
  # The stores are named singletons with :logger handlers: run alone.
  use ExUnit.Case, async: false

  alias Beamlens.Domain.Exception.ExceptionStore
  alias Beamlens.Domain.Sup.Tracker
  alias Beamlens.LogStore

  defmodule CounterDomain do
    use Beamlens.Domain

    @impl true
    def name, do: :counter

    @impl true
    def description, do: "A counter kept in a store of its own"

    @impl true
    def snapshot, do: %{count: Agent.get(__MODULE__.Store, & &1)}

    @impl true
    def metrics(snapshot) do
      [
        %{
          name: "counter",
          label: "counter",
          value: snapshot.count,
          kind: :limit,
          warn: 10,
          anomaly_type: "counter_high"
        }
      ]
    end

    @impl true
    def stores(watcher_opts) do
      send(Beamlens.Domain.StoresTest, {:stores_asked, watcher_opts[:name]})

      [
        %{
          id: __MODULE__.Store,
          start: {Agent, :start_link, [fn -> 0 end, [name: __MODULE__.Store]]}
        }
      ]
    end
  end

  # Child ids in start order (which_children lists the newest first).
  defp store_ids(instance) do
    instance |> Supervisor.which_children() |> Enum.map(&elem(&1, 0)) |> Enum.reverse()
  end

  test "BeamLens starts the stores its domains declare, each once, before the watchers" do
    instance = Module.concat(__MODULE__, "I#{System.unique_integer([:positive])}")
    Process.register(self(), __MODULE__)

    start_supervised!(
      {Beamlens,
       name: instance,
       provider: :none,
       interval: 60_000,
       watchers: [
         :logger,
         :exception,
         :sup,
         [name: :counter_a, domain_module: CounterDomain],
         [name: :counter_b, domain_module: CounterDomain]
       ]}
    )

    assert_received {:stores_asked, :counter_a}
    assert_received {:stores_asked, :counter_b}

    ids = store_ids(instance)
    assert Enum.count(ids, &(&1 == LogStore)) == 1
    assert Enum.count(ids, &(&1 == CounterDomain.Store)) == 1
    assert ExceptionStore in ids
    assert Tracker in ids

    assert Enum.find_index(ids, &(&1 == CounterDomain.Store)) <
             Enum.find_index(ids, &(&1 == :watchers))

    assert LogStore.running?() and ExceptionStore.running?() and Tracker.running?()
    assert Agent.get(CounterDomain.Store, & &1) == 0
  end

  test "domains that declare no store start none" do
    instance = Module.concat(__MODULE__, "I#{System.unique_integer([:positive])}")
    start_supervised!({Beamlens, name: instance, provider: :none, watchers: [:beam, :ets]})

    ids = store_ids(instance)
    refute LogStore in ids
    refute ExceptionStore in ids
    refute Tracker in ids
  end
end
