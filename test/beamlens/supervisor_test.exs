defmodule Beamlens.SupervisorTest do
  use Beamlens.WatcherCase, async: false

  test "child_spec validates up front and isolates restarts from the host" do
    assert_raise ArgumentError, ~r/unknown watcher :nope/, fn ->
      Beamlens.child_spec(watchers: [:nope])
    end

    assert %{restart: :temporary, type: :supervisor} = Beamlens.child_spec(provider: :none)
  end

  test "killing BeamLens processes repeatedly leaves the host's processes untouched", %{
    instance: instance
  } do
    host_worker = %{
      id: :host_worker,
      start: {Agent, :start_link, [fn -> :host_state end, [name: :beamlens_test_host]]}
    }

    host_children = [
      host_worker,
      {Beamlens,
       name: instance, watchers: [:beam, :ets], interval: 20, warmup: 2, provider: :none}
    ]

    host_sup =
      start_supervised!(%{
        id: :host,
        type: :supervisor,
        start:
          {Supervisor, :start_link,
           [host_children, [strategy: :one_for_one, max_restarts: 3, max_seconds: 5]]}
      })

    worker = Process.whereis(:beamlens_test_host)

    for _ <- 1..30 do
      case Beamlens.Watcher.whereis(instance, Enum.random([:beam, :ets])) do
        nil -> :ok
        pid -> Process.exit(pid, :kill)
      end

      Process.sleep(5)
    end

    # Kill the BeamLens supervisor itself a few times as well.
    for _ <- 1..5 do
      if pid = Process.whereis(instance), do: Process.exit(pid, :kill)
      Process.sleep(5)
    end

    assert Process.alive?(host_sup)
    assert Process.whereis(:beamlens_test_host) == worker
    assert Agent.get(worker, & &1) == :host_state
  end
end

defmodule Beamlens.SupervisorProviderTest do
  use Beamlens.WatcherCase, async: false
  import ExUnit.CaptureLog

  test "without a key, the default provider logs one clear error and watchers run rules-only",
       %{instance: instance} do
    previous = System.get_env("ANTHROPIC_API_KEY")
    System.delete_env("ANTHROPIC_API_KEY")
    on_exit(fn -> if previous, do: System.put_env("ANTHROPIC_API_KEY", previous) end)

    log =
      capture_log(fn ->
        start_beamlens(instance, watchers: [:beam, :ets], provider: :anthropic)
        await_ticks(instance, :beam, 3)
      end)

    assert [_one] = Regex.scan(~r/BeamLens: no usable model/, log)
    assert log =~ "ANTHROPIC_API_KEY"
    assert log =~ "rules-only"

    for info <- Beamlens.watchers(instance) do
      assert info.mode == :rules_only
    end
  end
end
