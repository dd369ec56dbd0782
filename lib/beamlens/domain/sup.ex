defmodule Beamlens.Domain.Sup do
  @moduledoc """
  The `:sup` domain: the supervision trees of the running applications,
  children counts, and restart activity.

  `Beamlens.Domain.Sup.Tracker` follows the supervisors of every running
  application (at most 1,000, depth 8) and counts restarts by monitoring
  their children, so restarts are seen whatever the host's Logger
  configuration (since Elixir 1.15 Logger drops OTP's supervisor reports
  unless the host sets `handle_sasl_reports: true`). A snapshot reads each
  supervisor's links; supervisors are called (`count_children`, then
  `which_children`) only where something changed. BeamLens starts the tracker with the `:sup` watcher;
  no supervisor state is read. See the tracker's docs for costs and limits.
  """

  use Beamlens.Domain

  alias Beamlens.Domain.Sup.Tracker

  @max_depth 8

  @impl true
  def name, do: :sup

  @impl true
  def description do
    "Supervisors: application supervision trees, children counts, and restart activity."
  end

  @impl true
  def stores(_watcher_opts), do: [Beamlens.Domain.Sup.Tracker]

  @impl true
  def snapshot do
    view =
      Tracker.refresh() ||
        raise "the supervisor tracker is not running (BeamLens starts it with the :sup watcher)"

    %{
      supervisors: length(view.supervisors),
      children_total: Enum.reduce(view.supervisors, 0, &(&1.children + &2)),
      largest: view.supervisors |> Enum.sort_by(& &1.children, :desc) |> Enum.take(5),
      restarts_total: view.restarts_total,
      restarting: Enum.take(view.restarting, 5),
      monitored_children: view.monitored_children,
      unmonitored_supervisors: view.unmonitored_supervisors
    }
  end

  @impl true
  def metrics(s) do
    # The supervisors restarting children in the last minute, and their
    # last restarted child.
    restarting =
      s.restarting
      |> Enum.take(3)
      |> Enum.flat_map(&[{"supervisor", &1.supervisor}, {"child", &1.last_child}])
      |> Enum.uniq()

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
    sups = for {"supervisor", name} <- entities, do: name
    children = for {"child", name} <- entities, do: name

    who =
      case {sups, children} do
        {[], _} ->
          ""

        {sups, []} ->
          " (most under #{Enum.join(sups, ", ")})"

        {sups, children} ->
          " (most under #{Enum.join(sups, ", ")}; child #{Enum.join(children, ", ")})"
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
          "The n (max 50) supervisors whose children terminated abnormally the most since " <>
            "BeamLens started: restarts, last child and reason.",
        fun: fn n -> Tracker.top_supervisors(n |> trunc() |> max(1) |> min(50)) end
      },
      %{
        name: "largest",
        args: "(n)",
        doc: "The n (max 50) supervisors with the most children, across all applications.",
        fun: fn n ->
          case Tracker.refresh() do
            nil ->
              []

            view ->
              view.supervisors
              |> Enum.sort_by(& &1.children, :desc)
              |> Enum.take(n |> trunc() |> max(1) |> min(50))
          end
        end
      }
    ]
  end

  @doc false
  @spec tree(String.t()) :: %{application: String.t(), supervisor: map() | nil}
  def tree(app) when is_binary(app) do
    case Enum.find(:application.which_applications(), fn {name, _, _} ->
           Atom.to_string(name) == app
         end) do
      nil ->
        raise ArgumentError, "no running application named #{inspect(app)}"

      {name, _, _} ->
        case top_supervisor(Atom.to_string(name)) do
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

  defp top_supervisor(app) do
    Enum.find_value(Tracker.app_supervisors(), fn {pid, name} -> if name == app, do: pid end)
  end

  defp which_children(pid) do
    if Tracker.supervisor_pid?(pid), do: Tracker.which_children(pid), else: []
  end

  defp registered_name(pid), do: Tracker.registered_name(pid)

  defp child_pid(pid) when is_pid(pid), do: inspect(pid)
  defp child_pid(other), do: Beamlens.Domain.id(other)
end
