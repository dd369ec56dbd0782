defmodule Beamlens.Domain.Ports do
  @moduledoc """
  The `:ports` domain: ports and sockets against the port limit, open file
  descriptors against the OS limit, and which processes own the most ports.

  File descriptors are read from `/proc/self/fd` and `/proc/self/limits`
  (Linux); elsewhere those fields are `nil`.
  """

  use Beamlens.Domain

  @socket_drivers [~c"tcp_inet", ~c"udp_inet", ~c"sctp_inet"]

  @impl true
  def name, do: :ports

  @impl true
  def description do
    "Ports and sockets: counts vs the port limit, open file descriptors vs the OS limit, top port owners."
  end

  @impl true
  def snapshot do
    ports = :erlang.ports()
    infos = Enum.flat_map(ports, &port_basics/1)
    {fds, fd_limit} = file_descriptors()

    %{
      port_count: length(ports),
      port_limit: :erlang.system_info(:port_limit),
      socket_count: Enum.count(infos, & &1.socket?) + socket_module_count(),
      by_driver:
        infos
        |> Enum.frequencies_by(& &1.name)
        |> Enum.sort_by(&elem(&1, 1), :desc)
        |> Enum.take(10)
        |> Map.new(),
      top_owners: top_owners(infos, 5),
      open_fds: fds,
      fd_limit: fd_limit
    }
  end

  @impl true
  def metrics(s) do
    # Owners of a handful of ports (init's forker, the shell) are not leakers.
    leaders = s.top_owners |> Enum.filter(&(&1.ports >= 5)) |> Enum.take(2)

    owners =
      Enum.flat_map(leaders, fn owner ->
        Beamlens.Domain.process_entities(%{
          pid: owner.owner,
          name: owner.name,
          current_function: owner[:current_function]
        })
      end)

    culprit =
      case leaders do
        [] ->
          nil

        leaders ->
          "port owner " <>
            Enum.map_join(leaders, ", ", fn owner ->
              process = %{
                pid: owner.owner,
                name: owner.name,
                current_function: owner[:current_function]
              }

              "#{Beamlens.Domain.describe_process(process)} with #{owner.ports} ports " <>
                "(#{Enum.join(owner.drivers, ", ")})"
            end)
      end

    fd =
      if s.open_fds && s.fd_limit do
        [
          %{
            name: "ports.fd_usage",
            label: "file descriptor usage",
            value: s.open_fds / s.fd_limit,
            kind: :limit,
            unit: :ratio,
            anomaly_type: "fd_usage_high",
            warn: 0.8,
            critical: 0.95,
            sustain: 1,
            entities: [{"resource", "file_descriptors"} | owners],
            culprit: culprit
          }
        ]
      else
        []
      end

    [
      %{
        name: "ports.port_usage",
        label: "port table usage",
        value: s.port_count / s.port_limit,
        kind: :limit,
        unit: :ratio,
        anomaly_type: "port_count_high",
        warn: 0.7,
        critical: 0.85,
        sustain: 1,
        entities: owners,
        culprit: culprit
      },
      %{
        name: "ports.port_count",
        label: "open ports",
        value: s.port_count,
        kind: :growth,
        window_ms: 5_000,
        unit: :count,
        anomaly_type: "port_leak",
        min_rel: 0.5,
        min_abs: 100,
        entities: owners,
        culprit: culprit
      },
      %{
        name: "ports.socket_count",
        label: "open sockets",
        value: s.socket_count,
        kind: :growth,
        window_ms: 5_000,
        unit: :count,
        anomaly_type: "socket_growth",
        min_rel: 0.5,
        min_abs: 100,
        entities: owners,
        culprit: culprit
      }
      | fd
    ]
  end

  @impl true
  def hypothesis(type) when type in ["port_leak", "port_count_high", "socket_growth"],
    do: "Ports or sockets are opened and never closed; the top owners are the likely leakers."

  def hypothesis("fd_usage_high"),
    do:
      "The OS file descriptor limit is close: new connections and file opens will fail with emfile."

  def hypothesis(_), do: nil

  @impl true
  def callbacks do
    [
      %{
        name: "owners",
        args: "(n)",
        doc:
          "The n (max 50) processes owning the most ports, with their port count and drivers. One pass over all ports.",
        fun: fn n ->
          :erlang.ports()
          |> Enum.flat_map(&port_basics/1)
          |> top_owners(n |> trunc() |> max(1) |> min(50))
        end
      },
      %{
        name: "list",
        args: "(n, by)",
        doc:
          "The n (max 100) ports with the largest \"input\", \"output\" (bytes) or \"queue_size\": " <>
            "id, driver name, owner, bytes in/out, queue size.",
        fun: &list/2
      },
      %{
        name: "fds",
        args: "()",
        doc: "Open file descriptors of the VM and the OS limit (Linux; nil elsewhere). Cheap.",
        fun: fn ->
          {open, limit} = file_descriptors()
          %{open: open, limit: limit}
        end
      }
    ]
  end

  @doc false
  @spec list(number(), String.t()) :: [map()]
  def list(n, by) when is_number(n) and by in ["input", "output", "queue_size"] do
    key = String.to_existing_atom(by)

    :erlang.ports()
    |> Enum.flat_map(fn port ->
      case :erlang.port_info(port) do
        :undefined ->
          []

        info ->
          queue =
            case :erlang.port_info(port, :queue_size) do
              {:queue_size, q} -> q
              _ -> 0
            end

          [
            %{
              port: inspect(port),
              name: to_string(info[:name]),
              owner: inspect(info[:connected]),
              input: info[:input],
              output: info[:output],
              queue_size: queue
            }
          ]
      end
    end)
    |> Enum.sort_by(&Map.fetch!(&1, key), :desc)
    |> Enum.take(n |> trunc() |> max(1) |> min(100))
  end

  def list(n, by),
    do:
      raise(
        ArgumentError,
        "expected list(n, \"input\" | \"output\" | \"queue_size\"), got: (#{inspect(n)}, #{inspect(by)})"
      )

  defp port_basics(port) do
    with {:name, name} <- :erlang.port_info(port, :name),
         {:connected, owner} <- :erlang.port_info(port, :connected) do
      [%{name: to_string(name), owner: owner, socket?: name in @socket_drivers}]
    else
      _ -> []
    end
  end

  defp top_owners(infos, n) do
    infos
    |> Enum.group_by(& &1.owner)
    |> Enum.map(fn {owner, ports} ->
      %{
        owner: inspect(owner),
        name: owner_name(owner),
        current_function: current_function(owner),
        ports: length(ports),
        drivers: ports |> Enum.map(& &1.name) |> Enum.uniq() |> Enum.take(5)
      }
    end)
    |> Enum.sort_by(& &1.ports, :desc)
    |> Enum.take(n)
  end

  defp owner_name(pid) when is_pid(pid) do
    case Process.info(pid, :registered_name) do
      {:registered_name, name} when is_atom(name) and name != [] -> Beamlens.Domain.id(name)
      _ -> nil
    end
  end

  defp owner_name(_), do: nil

  defp current_function(pid) when is_pid(pid) do
    case Process.info(pid, :current_function) do
      {:current_function, {m, f, a}} -> "#{Beamlens.Domain.id(m)}.#{f}/#{a}"
      _ -> nil
    end
  end

  defp current_function(_), do: nil

  # Sockets created with the :socket module are not ports.
  defp socket_module_count do
    if function_exported?(:socket, :number_of, 0), do: :socket.number_of(), else: 0
  rescue
    _ -> 0
  end

  @doc false
  @spec file_descriptors() :: {non_neg_integer() | nil, non_neg_integer() | nil}
  def file_descriptors do
    open =
      case File.ls("/proc/self/fd") do
        {:ok, entries} -> length(entries)
        _ -> nil
      end

    limit =
      with {:ok, text} <- File.read("/proc/self/limits"),
           [_, soft] <- Regex.run(~r/^Max open files\s+(\d+|unlimited)/m, text),
           {n, ""} <- Integer.parse(soft) do
        n
      else
        _ -> nil
      end

    {open, limit}
  end
end
