defmodule Beamlens.Domain.Sup.Tracker do
  @moduledoc """
  Follows the applications' supervisors for the `:sup` domain and counts
  child restarts without relying on logs.

  OTP logs a supervisor report when a child terminates abnormally, but
  since Elixir 1.15 Logger drops those reports unless the host sets
  `handle_sasl_reports: true`, and BeamLens must not change the host's
  logger. So restarts are observed directly: this process monitors the
  children of the supervisors it follows and counts each abnormal `:DOWN`
  (any reason but `:normal`, `:shutdown` and `{:shutdown, _}`) as a
  restart of that child by its supervisor, the same event OTP reports as
  `child_terminated`. Everything it reads is read-only: `count_children`
  and `which_children` calls, `Process.info(pid, :links)` and monitors;
  never `:sys.get_state` nor tracing.

  ## What it costs

    * On each refresh (one per `:sup` snapshot): one
      `Process.info(sup, :links)` per followed supervisor (at most 1,000),
      which reads its links without a message to it. Only a supervisor
      whose links changed since the last look gets a `count_children`
      call (1 s timeout; the whole pass is bounded to 500 ms), and
      `which_children` only when its counts or its children's pids
      changed, at most once per 50 ms. A steady refresh sends no message
      to any supervisor; `bench/sup_tracker.exs` measured it at 0.54x the
      former walk (`which_children` on every supervisor) over 200
      supervisors of 20 children, 0.73x over 10 of 5,000. The first
      refresh lists and monitors everything (about 80 ms for 4,000
      children on a loaded 2-core machine).
    * One monitor per child of a followed supervisor, at most 10,000 in
      all; supervisors with more than 1,000 children are counted but their
      children are not monitored (a busy `DynamicSupervisor` of
      connections is better watched by the `:exception` watcher).
    * After a child goes down, its supervisor is looked at again a few
      milliseconds later (then after 50 ms, 500 ms and 2 s while no
      replacement shows up), to monitor the child that replaced it.

  ## Limits

  A replacement that dies before it is looked at (within about a
  millisecond of its start) is not counted, and a child whose `init` fails
  never runs long enough to be monitored; when its supervisor gives up,
  the supervisor's own exit is seen by its parent. Supervisors started
  outside any application's supervision tree are not followed.
  """

  use GenServer

  # A Phoenix endpoint on Bandit alone starts about 100 acceptor supervisors
  # (ThousandIsland's default pool): 200 filled up before the host's own
  # supervisors started later were found. A steady refresh of 1,000
  # supervisors of 5 children took 4.8 ms and the tracker held 8 MiB
  # (`SUPS=1000 KIDS=5 MIX_ENV=test mix run bench/sup_tracker.exs`).
  @max_supervisors 1_000
  @max_depth 8
  @max_monitors 10_000
  @max_listed 1_000
  @max_keys 500
  @max_recent 1_000
  @call_timeout 1_000
  @refresh_budget_ms 500
  @relist_ms 50
  @retry_ms [5, 50, 500, 2_000]
  @recent_window_ms 60_000

  @doc false
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts), do: Beamlens.Store.child_spec(__MODULE__, opts)

  @doc "Starts the tracker, or returns `:ignore` when it already runs."
  @spec start_link(keyword()) :: GenServer.on_start() | :ignore
  def start_link(opts \\ []), do: Beamlens.Store.start_once(__MODULE__, opts)

  @doc "Whether the tracker is running."
  @spec running?() :: boolean()
  def running?, do: Process.whereis(__MODULE__) != nil

  @doc """
  Refreshes the followed supervisors and returns the view: `:supervisors`
  (name, application, children), `:restarts_total`, `:restarting` (the
  supervisors with restarts in the last minute, most first, with the last
  child and reason), `:monitored_children` and `:unmonitored_supervisors`.
  Returns `nil` when the tracker is not running or does not answer in 5 s.
  """
  @spec refresh() :: map() | nil
  def refresh, do: call(:refresh)

  @doc "The supervisors with the most restarts since the tracker started."
  @spec top_supervisors(pos_integer()) :: [map()]
  def top_supervisors(n), do: call({:top, n}) || []

  defp call(request) do
    GenServer.call(__MODULE__, request, 5_000)
  catch
    :exit, _ -> nil
  end

  ## GenServer

  @impl true
  def init(_opts) do
    state = %{
      sups: %{},
      not_supervisors: MapSet.new(),
      monitored: %{},
      dirty: %{},
      rescan: nil,
      restarts: 0,
      per_sup: %{},
      recent: :queue.new(),
      recent_size: 0
    }

    {:ok, state, {:continue, :refresh}}
  end

  @impl true
  def handle_continue(:refresh, state), do: {:noreply, do_refresh(state)}

  @impl true
  def handle_call(:refresh, _from, state) do
    state = do_refresh(state)
    {:reply, view(state), state}
  end

  def handle_call({:top, n}, _from, state) do
    top =
      state.per_sup
      |> Map.values()
      |> Enum.sort_by(&{&1.restarts, &1.last_at}, :desc)
      |> Enum.take(n)
      |> Enum.map(&Map.delete(&1, :last_at))

    {:reply, top, state}
  end

  @impl true
  def handle_info({:DOWN, _ref, :process, pid, reason}, state) do
    state = forget_supervisor(state, pid)

    case Map.pop(state.monitored, pid) do
      {nil, _} ->
        {:noreply, state}

      {{sup, child}, monitored} ->
        state = %{state | monitored: monitored}

        # Children of a supervisor that died with it (killed along with
        # it) were not restarted by it.
        if abnormal?(reason) and Process.alive?(sup) do
          {:noreply, state |> count_restart(sup, child, reason) |> mark_dirty(sup, 0)}
        else
          # A permanent child that stopped normally is restarted too; look
          # once, later, rather than after every task of a busy
          # Task.Supervisor.
          {:noreply, mark_dirty(state, sup, length(@retry_ms) - 1)}
        end
    end
  end

  def handle_info(:rescan, state) do
    now = now_ms()
    {due, later} = Enum.split_with(state.dirty, fn {_sup, {at, _try}} -> at <= now end)
    state = %{state | dirty: Map.new(later), rescan: nil}

    state =
      due
      |> Enum.take(20)
      |> Enum.reduce(state, fn {sup, {_at, attempt}}, state ->
        case Map.fetch(state.sups, sup) do
          {:ok, %{listed_at: at}} when is_integer(at) and now - at < @relist_ms ->
            # Listed moments ago: once more when the rate allows.
            put_dirty(state, sup, at + @relist_ms, attempt)

          {:ok, entry} ->
            {found_new?, state} = list(state, sup, entry)
            if found_new?, do: state, else: mark_dirty(state, sup, attempt + 1)

          :error ->
            state
        end
      end)

    # Dirty supervisors beyond the 20 of this pass wait for the next one.
    state = Enum.drop(due, 20) |> Enum.reduce(state, fn {sup, _}, s -> mark_dirty(s, sup, 0) end)
    {:noreply, schedule_rescan(state)}
  end

  def handle_info(_other, state), do: {:noreply, state}

  ## Restarts

  defp abnormal?(:normal), do: false
  defp abnormal?(:shutdown), do: false
  defp abnormal?({:shutdown, _}), do: false
  defp abnormal?(:noproc), do: false
  defp abnormal?(_), do: true

  defp count_restart(state, sup_pid, child, reason) do
    name =
      case state.sups do
        %{^sup_pid => %{name: name}} -> name
        _ -> inspect(sup_pid)
      end

    now = now_ms()
    reason = short(reason)

    key =
      if Map.has_key?(state.per_sup, name) or map_size(state.per_sup) < @max_keys,
        do: name,
        else: "other"

    last = %{last_child: child, last_reason: reason, last_at: now}

    per_sup =
      Map.update(
        state.per_sup,
        key,
        Map.merge(%{supervisor: key, restarts: 1}, last),
        &Map.merge(%{&1 | restarts: &1.restarts + 1}, last)
      )

    {recent, size} =
      if state.recent_size >= @max_recent,
        do: {:queue.drop(state.recent), state.recent_size},
        else: {state.recent, state.recent_size + 1}

    %{
      state
      | restarts: state.restarts + 1,
        per_sup: per_sup,
        recent: :queue.in({now, key, child, reason}, recent),
        recent_size: size
    }
  end

  defp mark_dirty(state, sup, attempt) do
    case Enum.at(@retry_ms, attempt) do
      nil ->
        state

      delay ->
        put_dirty(state, sup, now_ms() + delay, attempt)
    end
  end

  defp put_dirty(state, sup, at, attempt) do
    dirty =
      Map.update(state.dirty, sup, {at, attempt}, fn {old, a} ->
        {min(old, at), min(a, attempt)}
      end)

    schedule_rescan(%{state | dirty: dirty})
  end

  # One timer, due at the earliest dirty supervisor's time.
  defp schedule_rescan(%{dirty: dirty} = state) when map_size(dirty) > 0 do
    next = dirty |> Map.values() |> Enum.map(&elem(&1, 0)) |> Enum.min()

    case state.rescan do
      {_timer, due} when due <= next ->
        state

      previous ->
        with {timer, _due} <- previous, do: Process.cancel_timer(timer)
        timer = Process.send_after(self(), :rescan, max(next - now_ms(), 0))
        %{state | rescan: {timer, next}}
    end
  end

  defp schedule_rescan(state), do: state

  ## Following supervisors

  defp do_refresh(state) do
    deadline = now_ms() + @refresh_budget_ms

    state =
      Enum.reduce(app_supervisors(), state, fn {pid, app}, state ->
        cond do
          Map.has_key?(state.sups, pid) ->
            state

          MapSet.member?(state.not_supervisors, pid) ->
            state

          supervisor?(pid) ->
            add_supervisor(state, pid, app, nil, 0)

          # Remembered, so that its dictionary is read once.
          MapSet.size(state.not_supervisors) < 100 ->
            update_in(state.not_supervisors, &MapSet.put(&1, pid))

          true ->
            state
        end
      end)

    state.sups
    |> Enum.sort_by(fn {_pid, entry} -> entry.depth end)
    |> Enum.reduce(state, fn {pid, _entry}, state ->
      case Map.fetch(state.sups, pid) do
        {:ok, entry} -> if now_ms() < deadline, do: check(state, pid, entry), else: state
        :error -> state
      end
    end)
  end

  defp add_supervisor(state, pid, app, parent, depth) do
    if map_size(state.sups) >= @max_supervisors or depth > @max_depth or
         Map.has_key?(state.sups, pid) or not supervisor?(pid) do
      state
    else
      Process.monitor(pid)

      entry = %{
        name: registered_name(pid) || inspect(pid),
        application: app,
        parent: parent,
        depth: depth,
        counts: nil,
        children: %{},
        others: MapSet.new(),
        signature: nil,
        listed_at: nil
      }

      %{state | sups: Map.put(state.sups, pid, entry)}
    end
  end

  defp forget_supervisor(state, pid) do
    case Map.pop(state.sups, pid) do
      {nil, _} ->
        state

      {_entry, sups} ->
        # Its descendants go down with it; forget them too.
        children = for {child, %{parent: ^pid}} <- sups, do: child
        Enum.reduce(children, %{state | sups: sups}, &forget_supervisor(&2, &1))
    end
  end

  # Reads the supervisor's links first, without a message to it: when they
  # are the same as on the last look, so are its children and their
  # counts. Otherwise counts the children, and lists them when the counts
  # or the children's pids changed.
  defp check(state, pid, entry) do
    case Process.info(pid, :links) do
      {:links, links} ->
        signature = {length(links), :erlang.phash2(links)}

        if signature == entry.signature,
          do: state,
          else: check(state, pid, entry, links, signature)

      nil ->
        state
    end
  end

  defp check(state, pid, entry, links, signature) do
    counts = count_children(pid)

    linked =
      if monitorable?(counts), do: for(link <- links, is_pid(link), into: MapSet.new(), do: link)

    known = entry.children |> Map.keys() |> MapSet.new()

    changed? =
      entry.listed_at == nil or counts_changed?(entry.counts, counts) or
        (linked != nil and not MapSet.equal?(MapSet.difference(linked, entry.others), known))

    listed? = not changed? or entry.listed_at == nil or now_ms() - entry.listed_at >= @relist_ms
    # The signature is kept only when the children are known for it, so
    # that a change not yet listed is looked at again next time.
    signature = if listed? and counts != nil, do: signature
    state = update_in(state.sups[pid], &%{&1 | counts: counts, signature: signature})

    if changed? and listed?, do: state |> list(pid, state.sups[pid]) |> elem(1), else: state
  end

  defp counts_changed?(nil, _), do: true
  defp counts_changed?(_, nil), do: false
  defp counts_changed?(old, new), do: old != new

  # The pids linked to the supervisor, when it is small enough to follow:
  # its children, its parent and any other process it linked to.
  defp linked(pid, counts) do
    if monitorable?(counts) do
      case Process.info(pid, :links) do
        {:links, links} -> for link <- links, is_pid(link), into: MapSet.new(), do: link
        nil -> nil
      end
    end
  end

  defp monitorable?(%{active: active}), do: active <= @max_listed
  defp monitorable?(_), do: false

  # Lists the children of one supervisor, monitors the new ones, follows
  # new child supervisors. Returns whether a child not seen before showed up.
  defp list(state, pid, entry) do
    if monitorable?(entry.counts) or entry.counts == nil do
      children = which_children(pid)
      app = entry.application

      {new?, state} =
        Enum.reduce(children, {false, state}, fn {id, child, type, modules}, {new?, state} ->
          cond do
            not is_pid(child) ->
              {new?, state}

            Map.has_key?(entry.children, child) ->
              {new?, state}

            true ->
              state = monitor_child(state, pid, child, child_name(id, modules))

              # A new child supervisor (a restarted one too) is followed
              # right away: counted, and its children listed.
              state =
                with :supervisor <- type,
                     %{sups: %{^child => _}} = state <-
                       add_supervisor(state, child, app, pid, entry.depth + 1) do
                  check(state, child, state.sups[child])
                else
                  _ -> state
                end

              {true, state}
          end
        end)

      pids =
        for {id, child, _, modules} <- children,
            is_pid(child),
            into: %{},
            do: {child, child_name(id, modules)}

      # Links that are not children (the parent, ...) are remembered so
      # that they do not look like a change on the next check.
      others =
        case linked(pid, entry.counts) do
          nil -> MapSet.new()
          links -> links |> MapSet.difference(MapSet.new(Map.keys(pids)))
        end

      state =
        update_in(state.sups[pid], &%{&1 | children: pids, others: others, listed_at: now_ms()})

      {new?, state}
    else
      {true, state}
    end
  end

  defp monitor_child(state, sup, child, name) do
    if map_size(state.monitored) < @max_monitors and not Map.has_key?(state.monitored, child) do
      Process.monitor(child)
      %{state | monitored: Map.put(state.monitored, child, {sup, name})}
    else
      state
    end
  end

  defp child_name(:undefined, [module | _]) when is_atom(module), do: Beamlens.Domain.id(module)
  defp child_name(id, _modules), do: Beamlens.Domain.id(id)

  ## View

  defp view(state) do
    now = now_ms()

    recent =
      for {at, sup, child, reason} <- :queue.to_list(state.recent),
          now - at <= @recent_window_ms,
          do: {sup, child, reason}

    restarting =
      recent
      |> Enum.group_by(&elem(&1, 0))
      |> Enum.map(fn {sup, events} ->
        {_, child, reason} = List.last(events)

        %{
          supervisor: sup,
          restarts_last_minute: length(events),
          last_child: child,
          last_reason: reason
        }
      end)
      |> Enum.sort_by(& &1.restarts_last_minute, :desc)

    %{
      supervisors:
        for {_pid, entry} <- state.sups do
          %{name: entry.name, application: entry.application, children: children(entry.counts)}
        end,
      restarts_total: state.restarts,
      restarting: restarting,
      monitored_children: map_size(state.monitored),
      unmonitored_supervisors: Enum.count(state.sups, fn {_, e} -> not monitorable?(e.counts) end)
    }
  end

  defp children(%{active: active}), do: active
  defp children(_), do: 0

  ## Reading supervisors (read-only calls, bounded by a timeout)

  @doc false
  # {pid, application name} of each running application's top supervisor.
  @spec app_supervisors() :: [{pid(), String.t()}]
  def app_supervisors do
    for {app, _, _} <- :application.which_applications(),
        pid = top_supervisor(app),
        pid != nil,
        do: {pid, Atom.to_string(app)}
  end

  defp top_supervisor(app) do
    with master when is_pid(master) <- :application_controller.get_master(app),
         {pid, _module} when is_pid(pid) <- :application_master.get_child(master) do
      pid
    else
      _ -> nil
    end
  catch
    _, _ -> nil
  end

  # Only supervisors get supervisor calls: an application's top process
  # may be any process, and a GenServer without a matching handle_call
  # would crash on them. `:supervisor`, and Elixir's Supervisor,
  # DynamicSupervisor, Task.Supervisor and Registry, set this initial call;
  # a supervisor_bridge does not answer these calls and is skipped.
  defp supervisor?(pid) do
    case Process.info(pid, :dictionary) do
      {:dictionary, dictionary} ->
        match?({_, {:supervisor, _, _}}, List.keyfind(dictionary, :"$initial_call", 0))

      nil ->
        false
    end
  end

  defp count_children(pid) do
    case GenServer.call(pid, :count_children, @call_timeout) do
      [_ | _] = counts ->
        %{
          specs: counts[:specs],
          active: counts[:active],
          supervisors: counts[:supervisors],
          workers: counts[:workers]
        }

      _ ->
        nil
    end
  catch
    :exit, _ -> nil
  end

  @doc false
  @spec which_children(pid()) :: [{term(), pid() | :restarting | :undefined, atom(), term()}]
  def which_children(pid) do
    case GenServer.call(pid, :which_children, @call_timeout) do
      children when is_list(children) ->
        for {_id, _child, type, _modules} = child <- children,
            type in [:worker, :supervisor],
            do: child

      _ ->
        []
    end
  catch
    :exit, _ -> []
  end

  @doc false
  @spec supervisor_pid?(pid()) :: boolean()
  def supervisor_pid?(pid) when is_pid(pid), do: supervisor?(pid)

  @doc false
  @spec registered_name(pid()) :: String.t() | nil
  def registered_name(pid) do
    case Process.info(pid, :registered_name) do
      {:registered_name, name} when is_atom(name) and name != [] -> Beamlens.Domain.id(name)
      _ -> nil
    end
  end

  defp short(term) when is_atom(term), do: Beamlens.Domain.id(term)
  defp short(term), do: term |> inspect(limit: 5, printable_limit: 200) |> String.slice(0, 200)

  defp now_ms, do: System.monotonic_time(:millisecond)
end
