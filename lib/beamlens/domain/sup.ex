defmodule Beamlens.Domain.Sup do
  @moduledoc """
  The `:sup` domain: the supervision trees of the running applications,
  children counts, and restart activity.

  The tree is walked from each application's top supervisor with
  `count_children`/`which_children` calls (1 s timeout each; at most 200
  supervisors and depth 8). Restarts are counted from the supervisor reports
  that OTP logs when a child terminates abnormally, captured by BeamLens's
  bounded log handler; no supervisor state is read.
  """

  use Beamlens.Domain

  alias Beamlens.LogStore

  @max_supervisors 200
  @max_depth 8
  @call_timeout 1_000

  @impl true
  def name, do: :sup

  @impl true
  def description do
    "Supervisors: application supervision trees, children counts, and restart activity."
  end

  @impl true
  def snapshot do
    sups = walk_all()
    totals = LogStore.totals()

    %{
      supervisors: length(sups),
      children_total: Enum.reduce(sups, 0, &(&1.children + &2)),
      largest: sups |> Enum.sort_by(& &1.children, :desc) |> Enum.take(5),
      restarts_total: Map.get(totals, :restarts, 0),
      supervisor_shutdowns_total: Map.get(totals, :supervisor_shutdowns, 0),
      most_restarts: LogStore.top_supervisors(5)
    }
  end

  @impl true
  def metrics(s) do
    restarting = s.most_restarts |> Enum.take(3) |> Enum.map(&{"supervisor", &1.supervisor})

    largest =
      s.largest
      |> Enum.take(3)
      |> Enum.map(fn sup ->
        %{
          name: "sup.children.#{sup.name}",
          label: "children of #{sup.name}",
          value: sup.children,
          kind: :level,
          unit: :count,
          anomaly_type: "supervisor_child_growth",
          min_rel: 1.0,
          min_abs: 500,
          entities: [{"supervisor", sup.name}]
        }
      end)

    [
      %{
        name: "sup.restarts",
        label: "child restart rate",
        value: s.restarts_total,
        kind: :counter,
        window_ms: 10_000,
        min_count: 5,
        unit: :per_second,
        anomaly_type: "restart_storm",
        min_rel: 2.0,
        min_abs: 0.5,
        warn: 0.5,
        critical: 5,
        sustain: 1,
        entities: restarting
      },
      %{
        name: "sup.children_total",
        label: "supervised children",
        value: s.children_total,
        kind: :level,
        unit: :count,
        anomaly_type: "supervisor_child_growth",
        min_rel: 0.5,
        min_abs: 1_000
      }
      | largest
    ]
  end

  @impl true
  def summarize(finding, %{name: "sup.restarts", entities: entities} = metric) do
    who =
      case entities do
        [] -> ""
        list -> " (most under #{Enum.map_join(list, ", ", &elem(&1, 1))})"
      end

    Beamlens.Domain.default_summary(finding, metric) <> who
  end

  def summarize(finding, metric), do: Beamlens.Domain.default_summary(finding, metric)

  @impl true
  def hypothesis("restart_storm"),
    do: "Children crash and restart repeatedly; a dependency they need at start-up may be down."

  def hypothesis("supervisor_child_growth"),
    do: "A dynamic supervisor accumulates children that never exit."

  def hypothesis(_), do: nil

  @impl true
  def callbacks do
    [
      %{
        name: "tree",
        args: "(app)",
        doc:
          "The supervision tree of one application (name as a string, e.g. \"my_app\"): " <>
            "supervisors with their children (id, type, pid; at most 50 per supervisor). " <>
            "Calls each supervisor once (1 s timeout).",
        fun: &tree/1
      },
      %{
        name: "restarts",
        args: "(n)",
        doc:
          "The n (max 50) supervisors with the most abnormal child terminations, with the last child and reason.",
        fun: fn n -> LogStore.top_supervisors(n |> trunc() |> max(1) |> min(50)) end
      },
      %{
        name: "largest",
        args: "(n)",
        doc: "The n (max 50) supervisors with the most children, across all applications.",
        fun: fn n ->
          walk_all()
          |> Enum.sort_by(& &1.children, :desc)
          |> Enum.take(n |> trunc() |> max(1) |> min(50))
        end
      }
    ]
  end

  @doc false
  def tree(app) when is_binary(app) do
    case Enum.find(:application.which_applications(), fn {name, _, _} ->
           Atom.to_string(name) == app
         end) do
      nil ->
        raise ArgumentError, "no running application named #{inspect(app)}"

      {name, _, _} ->
        case top_supervisor(name) do
          nil -> %{application: app, supervisor: nil}
          pid -> %{application: app, supervisor: describe_tree(pid, 0)}
        end
    end
  end

  defp describe_tree(pid, depth) do
    children = which_children(pid)

    %{
      pid: inspect(pid),
      name: registered_name(pid),
      children:
        children
        |> Enum.take(50)
        |> Enum.map(fn {id, child, type, _modules} ->
          base = %{id: Beamlens.Domain.id(id), type: Atom.to_string(type), pid: child_pid(child)}

          if type == :supervisor and is_pid(child) and depth < @max_depth,
            do: Map.put(base, :supervisor, describe_tree(child, depth + 1)),
            else: base
        end),
      children_count: length(children)
    }
  end

  defp walk_all do
    :application.which_applications()
    |> Enum.flat_map(fn {app, _, _} ->
      case top_supervisor(app) do
        nil -> []
        pid -> [{pid, Atom.to_string(app)}]
      end
    end)
    |> walk([], 0)
    |> elem(0)
  end

  # Breadth-first over supervisors, bounded in count and depth.
  defp walk([], acc, _count), do: {Enum.reverse(acc), length(acc)}
  defp walk(_queue, acc, count) when count >= @max_supervisors, do: {Enum.reverse(acc), count}

  defp walk([{pid, app} | rest], acc, count) do
    children = which_children(pid)

    entry = %{
      name: registered_name(pid) || inspect(pid),
      application: app,
      children: length(children)
    }

    subs = for {_id, child, :supervisor, _} <- children, is_pid(child), do: {child, app}

    walk(rest ++ Enum.take(subs, @max_supervisors), [entry | acc], count + 1)
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

  defp which_children(pid) do
    GenServer.call(pid, :which_children, @call_timeout)
  catch
    :exit, _ -> []
  end

  defp registered_name(pid) do
    case Process.info(pid, :registered_name) do
      {:registered_name, name} when is_atom(name) and name != [] -> Beamlens.Domain.id(name)
      _ -> nil
    end
  end

  defp child_pid(pid) when is_pid(pid), do: inspect(pid)
  defp child_pid(other), do: Beamlens.Domain.id(other)
end
