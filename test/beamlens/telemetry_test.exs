defmodule Beamlens.TelemetryTest do
  use ExUnit.Case, async: true

  setup context do
    handler_id = "#{inspect(__MODULE__)}-#{context.test}"
    on_exit(fn -> :telemetry.detach(handler_id) end)
    %{handler_id: handler_id}
  end

  test "execute/3 prefixes the event with :beamlens", %{handler_id: id} do
    attach(id, [[:beamlens, :test, :ping]])
    Beamlens.Telemetry.execute([:test, :ping], %{count: 1}, %{who: :test})
    assert_receive {:event, [:beamlens, :test, :ping], %{count: 1}, %{who: :test}}
  end

  test "span/3 emits start and stop with a duration", %{handler_id: id} do
    attach(id, [[:beamlens, :test, :work, :start], [:beamlens, :test, :work, :stop]])

    assert Beamlens.Telemetry.span([:test, :work], %{job: 1}, fn ->
             {:done, %{job: 1, ok: true}}
           end) ==
             :done

    assert_receive {:event, [:beamlens, :test, :work, :start], %{system_time: _}, %{job: 1}}

    assert_receive {:event, [:beamlens, :test, :work, :stop], %{duration: duration}, %{ok: true}}

    assert is_integer(duration) and duration >= 0
  end

  test "span/3 emits :exception and re-raises", %{handler_id: id} do
    attach(id, [[:beamlens, :test, :fail, :exception]])

    assert_raise RuntimeError, "boom", fn ->
      Beamlens.Telemetry.span([:test, :fail], %{}, fn -> raise "boom" end)
    end

    assert_receive {:event, [:beamlens, :test, :fail, :exception], _, %{kind: :error}}
  end

  test "a failing handler is detached", %{handler_id: id} do
    :ok = :telemetry.attach(id, [:beamlens, :test, :crash], &__MODULE__.crash/4, nil)

    Beamlens.Telemetry.execute([:test, :crash], %{}, %{})
    assert :telemetry.list_handlers([:beamlens, :test, :crash]) == []
  end

  def crash(_event, _measurements, _metadata, _config), do: raise("handler bug")

  def forward(event, measurements, metadata, pid) do
    send(pid, {:event, event, measurements, metadata})
  end

  defp attach(id, events) do
    :ok = :telemetry.attach_many(id, events, &__MODULE__.forward/4, self())
  end
end
