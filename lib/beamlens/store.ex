defmodule Beamlens.Store do
  @moduledoc """
  The building block of BeamLens's bounded stores: `Beamlens.LogStore`,
  `Beamlens.Domain.Exception.ExceptionStore`,
  `Beamlens.Domain.Ecto.TelemetryStore` and `Beamlens.Domain.Sup.Tracker`.

  Each store is one owner process (a `GenServer`) with state that reporting
  processes reach without a message to it. This module holds what they all
  do the same way:

    * **Start once.** `start_once/2` starts a named store or returns
      `:ignore` when it already runs, so that several BeamLens instances
      and a store the host started itself share one. `child_spec/3` is the
      matching child spec.
    * **Shared state.** `publish/2`, `shared/1` and `unpublish/1` keep the
      state the reporting processes need (counters, tables, the owner's pid)
      in `:persistent_term`, read without copying.
    * **A bounded inbox.** Reporting processes hand work to the owner with
      `offer/2`, which refuses it (`:full`) when `:max_pending` messages
      already wait; the owner calls `taken/1` for each one it receives. The
      owner's mailbox never grows past the bound, whatever the rate.
    * **Bounded tables.** `table/1` creates the public ETS set the
      reporting processes write to; `bump/5` counts under a key until the
      table holds `max_keys` keys and under `"other"` after that.
    * **Bounded maps.** `make_room/4` evicts the least recently used entry
      of a map before a new key would pass its bound.
    * **Logger handlers.** `attach_logger/4` and `detach_logger/1` install a
      store's `:logger` handler in place of a stale one.
  """

  @typedoc """
  The inbox fields of a store's shared state: the owner, the count of
  messages waiting and the bound. A store's shared map holds these keys
  next to its own.
  """
  @type inbox :: %{
          required(:pid) => pid(),
          required(:pending) => :atomics.atomics_ref(),
          required(:max_pending) => pos_integer(),
          optional(atom()) => term()
        }

  @overflow_key "other"

  ## Start once

  @doc """
  The child spec of a store `module` started with `module.start_link(opts)`,
  identified by `id` (default: the module).

      iex> Beamlens.Store.child_spec(Beamlens.LogStore, capacity: 10)
      %{id: Beamlens.LogStore, start: {Beamlens.LogStore, :start_link, [[capacity: 10]]}, type: :worker}
  """
  @spec child_spec(module(), term(), term()) :: Supervisor.child_spec()
  def child_spec(module, opts, id \\ nil) do
    %{id: id || module, start: {module, :start_link, [opts]}, type: :worker}
  end

  @doc """
  Starts the `GenServer` `module` with `arg`, registered under its module
  name, or returns `:ignore` when it already runs.
  """
  @spec start_once(module(), term()) :: GenServer.on_start() | :ignore
  def start_once(module, arg) do
    case GenServer.start_link(module, arg, name: module) do
      {:error, {:already_started, _pid}} -> :ignore
      other -> other
    end
  end

  ## Shared state

  @doc "Publishes the shared state of a store under `key`."
  @spec publish(term(), map()) :: :ok
  def publish(key, shared), do: :persistent_term.put(key, shared)

  @doc "The shared state published under `key`, or `nil` when the store is not running."
  @spec shared(term()) :: map() | nil
  def shared(key), do: :persistent_term.get(key, nil)

  @doc "Removes the shared state published under `key`."
  @spec unpublish(term()) :: :ok
  def unpublish(key) do
    _ = :persistent_term.erase(key)
    :ok
  end

  ## Inbox

  @doc """
  The inbox of the calling process, to merge into its shared state: at most
  `max_pending` messages wait for it.
  """
  @spec inbox(pos_integer()) :: inbox()
  def inbox(max_pending) when is_integer(max_pending) and max_pending > 0 do
    %{pid: self(), pending: :atomics.new(1, signed: true), max_pending: max_pending}
  end

  @doc """
  Sends `message` to the store's owner unless `max_pending` messages already
  wait for it, in which case the message is dropped and `:full` returned
  (the caller counts it). Runs in the reporting process.
  """
  @spec offer(inbox(), term()) :: :ok | :full
  def offer(%{pid: pid, pending: pending, max_pending: max}, message) do
    if :atomics.add_get(pending, 1, 1) > max do
      :atomics.sub(pending, 1, 1)
      :full
    else
      send(pid, message)
      :ok
    end
  end

  @doc "Called by the owner for each message `offer/2` sent it: one less waits."
  @spec taken(inbox()) :: :ok
  def taken(%{pending: pending}), do: :atomics.sub(pending, 1, 1)

  ## Bounded tables

  @doc """
  A new public ETS set that any process may write to concurrently. Options
  are added to `[:set, :public, write_concurrency: true]`.
  """
  @spec table(atom(), list()) :: :ets.tid()
  def table(name, options \\ []) do
    :ets.new(name, [:set, :public, {:write_concurrency, true} | options])
  end

  @doc """
  Applies the `:ets.update_counter/4` operations `ops` to `key`, inserting
  `default` (whose first element is replaced by the key) when it is absent.
  Once the table holds `max_keys` keys, new keys are counted under
  `"other"`. Returns the key that was counted.
  """
  @spec bump(:ets.tid(), term(), [{pos_integer(), integer()}], tuple(), pos_integer()) ::
          term()
  def bump(table, key, ops, default, max_keys) do
    key = bounded_key(table, key, max_keys)
    :ets.update_counter(table, key, ops, put_elem(default, 0, key))
    key
  end

  @doc """
  `key` when it is in `table` or the table holds fewer than `max_keys`
  keys, otherwise `"other"`.
  """
  @spec bounded_key(:ets.tid(), term(), pos_integer()) :: term()
  def bounded_key(table, key, max_keys) do
    if :ets.member(table, key) or :ets.info(table, :size) < max_keys,
      do: key,
      else: @overflow_key
  end

  ## Bounded maps

  @doc """
  `map`, with room for `key`: when `key` is new and the map already holds
  `max` entries, the entry with the lowest `recency.(value)` is removed.

      iex> groups = %{a: %{seq: 3}, b: %{seq: 1}}
      iex> Beamlens.Store.make_room(groups, :c, 2, & &1.seq)
      %{a: %{seq: 3}}
      iex> Beamlens.Store.make_room(groups, :a, 2, & &1.seq)
      %{a: %{seq: 3}, b: %{seq: 1}}
      iex> Beamlens.Store.make_room(groups, :c, 3, & &1.seq)
      %{a: %{seq: 3}, b: %{seq: 1}}
  """
  @spec make_room(map(), term(), pos_integer(), (term() -> term())) :: map()
  def make_room(map, key, max, recency) do
    if map_size(map) < max or Map.has_key?(map, key) do
      map
    else
      {oldest, _} = Enum.min_by(map, fn {_, value} -> recency.(value) end)
      Map.delete(map, oldest)
    end
  end

  ## Logger handlers

  @doc """
  Installs the `:logger` handler `id` (a module with `log/2`) at `level`
  with `config`, replacing a handler left under the same id.
  """
  @spec attach_logger(atom(), module(), :logger.level() | :all, term()) ::
          :ok | {:error, term()}
  def attach_logger(id, module, level, config) do
    _ = :logger.remove_handler(id)
    :logger.add_handler(id, module, %{level: level, config: config})
  end

  @doc "Removes the `:logger` handler `id`, if installed."
  @spec detach_logger(atom()) :: :ok
  def detach_logger(id) do
    _ = :logger.remove_handler(id)
    :ok
  end
end
