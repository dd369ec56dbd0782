defmodule Beamlens.BusyTest do
  # "Busy" reaches Elixir in two wire shapes; every error type gives one.
  use ExUnit.Case, async: true

  alias Beamlens.{Error, LLMError, LuaError}

  test "the bare and the tagged busy give the same exception, naming the capacity" do
    {:ok, %{job_capacity: capacity}} = Beamlens.Runtime.status()

    tagged =
      {:busy, "the native job queue is full (#{capacity} jobs in flight)",
       %{"capacity" => capacity}}

    assert Error.busy() == tagged

    for module <- [Error, LuaError, LLMError] do
      assert module.from_native(:busy) == module.from_native(tagged)
    end

    assert %Error{kind: :busy, details: %{"capacity" => ^capacity}} = Error.from_native(:busy)
    assert Exception.message(Error.from_native(:busy)) =~ "#{capacity} jobs in flight"
    assert %LuaError{kind: :busy, message: lua} = LuaError.from_native(:busy)
    assert lua =~ "capacity #{capacity}"
    assert %LLMError{reason: :busy, retryable?: true, message: llm} = LLMError.from_native(:busy)
    assert llm =~ "#{capacity} jobs in flight"
  end
end
