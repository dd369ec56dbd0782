defmodule Beamlens.StoreTest do
  use ExUnit.Case, async: true

  alias Beamlens.Store

  doctest Store

  test "an inbox refuses messages beyond its bound until the owner takes them" do
    inbox = Store.inbox(2)
    assert Store.offer(inbox, :a) == :ok
    assert Store.offer(inbox, :b) == :ok
    assert Store.offer(inbox, :c) == :full
    assert_received :a
    assert_received :b
    refute_received :c

    Store.taken(inbox)
    assert Store.offer(inbox, :d) == :ok
    assert_received :d
  end

  test "a bounded table counts new keys under \"other\" once full" do
    table = Store.table(:store_test)
    assert Store.bump(table, "a", [{2, 1}], {nil, 0}, 2) == "a"
    assert Store.bump(table, "b", [{2, 1}], {nil, 0}, 2) == "b"
    assert Store.bump(table, "c", [{2, 5}], {nil, 0}, 2) == "other"
    assert Store.bump(table, "a", [{2, 1}], {nil, 0}, 2) == "a"
    assert Store.bump(table, "d", [{2, 1}], {nil, 0}, 2) == "other"

    assert table |> :ets.tab2list() |> Enum.sort() ==
             [{"a", 2}, {"b", 1}, {"other", 6}]
  end

  defmodule Server do
    use GenServer
    def init(arg), do: {:ok, arg}
  end

  test "start_once starts a named process once" do
    assert {:ok, pid} = Store.start_once(Server, :first)
    assert Store.start_once(Server, :second) == :ignore
    assert Process.whereis(Server) == pid
    assert :sys.get_state(Server) == :first
    GenServer.stop(pid)
  end

  test "shared state is published and removed" do
    key = {__MODULE__, make_ref()}
    assert Store.shared(key) == nil
    Store.publish(key, %{a: 1})
    assert Store.shared(key) == %{a: 1}
    Store.unpublish(key)
    assert Store.shared(key) == nil
  end
end
