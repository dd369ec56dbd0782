defmodule Beamlens.ErrorTest do
  use ExUnit.Case, async: true
  doctest Beamlens.Error

  alias Beamlens.Error

  test "message/1 shows the kind and the explanation" do
    error = Error.from_native({:busy, "the native job queue is full (8 jobs in flight)", %{}})
    assert Exception.message(error) == "(busy) the native job queue is full (8 jobs in flight)"
  end

  test "wrap/1 keeps successes and turns native errors into exceptions" do
    assert Error.wrap({:ok, 1}) == {:ok, 1}
    assert {:error, %Error{kind: :busy}} = Error.wrap({:error, :busy})
    assert {:error, %Error{kind: :panic}} = Error.wrap({:error, {:panic, "x", %{}}})
    assert {:error, %Error{kind: :unknown}} = Error.wrap({:error, :whatever})
  end
end
