defmodule Beamlens.Domain.Exception.FingerprintTest do
  use ExUnit.Case, async: true

  alias Beamlens.Domain.Exception.Fingerprint

  doctest Fingerprint

  defp stacktrace(args) do
    [
      {MyApp.Billing, :charge, args, [file: ~c"lib/billing.ex", line: 12]},
      {MyApp.Checkout, :create, 2, [file: ~c"lib/checkout.ex", line: 40]},
      {:gen_server, :try_dispatch, 4, [file: ~c"gen_server.erl", line: 1123]}
    ]
  end

  test "an event keeps the shapes of arguments, never their values" do
    event =
      Fingerprint.event(
        :error,
        %RuntimeError{message: "charge failed"},
        stacktrace(["postgres://app:pgpass@db/prod", %{card: "4111111111111111"}, 3, [1, 2]])
      )

    assert %{kind: :error, exception: "RuntimeError", message: "charge failed"} = event
    assert event.modules == [MyApp.Billing, MyApp.Checkout, :gen_server]
    [first | _] = event.frames

    assert first.args == [
             "<binary, 29 bytes>",
             "<map, 1 keys>",
             "<integer>",
             "<list, 2 items>"
           ]

    refute inspect(event) =~ "pgpass"
    refute inspect(event) =~ "4111"

    assert Fingerprint.format_frame(first) ==
             "MyApp.Billing.charge(<binary, 29 bytes>, <map, 1 keys>, <integer>, <list, 2 items>) (lib/billing.ex:12)"
  end

  test "kinds and messages" do
    assert %{kind: :exit, exception: nil, message: "killed"} =
             Fingerprint.event(:exit, :killed, nil)

    assert %{kind: :throw, message: "throw: :oops"} = Fingerprint.event(:throw, :oops, [])
    assert %{kind: :message, message: "a b"} = Fingerprint.event(:message, ["a", ?\s, "b"], [])

    assert %{kind: :error, exception: "ArithmeticError"} =
             Fingerprint.event(:error, :badarith, [])

    assert %{kind: :exit} = Fingerprint.event(:unknown_kind, :x, [])
  end

  test "messages are capped at 2 KiB" do
    %{message: message} = Fingerprint.event(:message, String.duplicate("word ", 2_000), [])
    assert byte_size(message) <= 2_048
  end

  test "a malformed stack trace gives no frames instead of raising" do
    assert Fingerprint.frames([:not_a_frame, {1, 2}]) == []
    assert Fingerprint.frames(:nope) == []
    assert [%{module: nil, arity: 1}] = Fingerprint.frames([{fn x -> x end, 1, []}])
  end

  test "occurrences of the same problem share a key; different problems do not" do
    frames = Fingerprint.frames(stacktrace(2))

    a = Fingerprint.key(:error, "RuntimeError", "order 42 failed for \"alice\"", frames)
    b = Fingerprint.key(:error, "RuntimeError", "order 7 failed for \"bob\"", frames)
    c = Fingerprint.key(:error, "KeyError", "order 7 failed for \"bob\"", frames)
    d = Fingerprint.key(:error, "RuntimeError", "order 7 failed for \"bob\"", tl(frames))

    assert a == b
    assert a != c
    assert a != d
    assert Fingerprint.id(255) == "ff"
  end

  test "normalisation replaces what varies between occurrences" do
    assert Fingerprint.normalize(
             "job 550e8400-e29b-41d4-a716-446655440000 ref #Reference<0.1.2.3> " <>
               "sha deadbeefcafe1234 took 1.5 s in 'q'"
           ) == "job <uuid> ref #Reference<> sha <hex> took N s in '…'"
  end
end
