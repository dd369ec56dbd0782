defmodule Beamlens.Domain.System do
  @moduledoc """
  The `:system` domain: OS-level CPU load, memory and disk usage through
  OTP's `:os_mon` application.

  `:os_mon` is started the first time a snapshot is taken, if it is not
  running already (it is part of Erlang/OTP; on Debian it is the
  `erlang-os-mon` package). BeamLens does not declare it, since starting
  it changes the host (port programs, an alarm handler), so a host that uses
  this watcher declares it in its `mix.exs`:

      def application do
        [extra_applications: [:logger, :os_mon]]
      end

  Since Elixir 1.15, Mix (and any release) only puts the applications a
  project declares on the code path; without that line the watcher says so
  in its error.
  """

  use Beamlens.Domain

  @impl true
  def name, do: :system

  @impl true
  def description, do: "Operating system: CPU load average, memory and disk usage (via os_mon)."

  @impl true
  def snapshot do
    ensure_os_mon!()
    cores = :erlang.system_info(:logical_processors_available)
    cores = if is_integer(cores), do: cores, else: :erlang.system_info(:schedulers_online)
    memory = Map.new(:memsup.get_system_memory_data())
    total = memory[:system_total_memory] || memory[:total_memory]
    available = memory[:available_memory] || memory[:free_memory]

    %{
      cores: cores,
      load1: :cpu_sup.avg1() / 256,
      load5: :cpu_sup.avg5() / 256,
      memory_total: total,
      memory_available: available,
      memory_used_ratio:
        if(total && available && total > 0, do: 1 - available / total, else: nil),
      disks:
        :disksup.get_disk_data()
        |> Enum.filter(fn {_mount, kbytes, _pct} -> kbytes > 0 end)
        |> Enum.sort_by(fn {_mount, _kbytes, pct} -> -pct end)
        |> Enum.take(10)
        |> Enum.map(fn {mount, kbytes, pct} ->
          %{mount: to_string(mount), kbytes: kbytes, used_ratio: pct / 100}
        end)
    }
  end

  @impl true
  def metrics(s) do
    memory =
      if s.memory_used_ratio do
        [
          %{
            name: "system.memory_usage",
            label: "system memory usage",
            value: s.memory_used_ratio,
            kind: :limit,
            unit: :ratio,
            anomaly_type: "system_memory_high",
            warn: 0.9,
            critical: 0.97,
            sustain: 2,
            entities: [{"resource", "memory"}]
          }
        ]
      else
        []
      end

    disks =
      Enum.map(s.disks, fn disk ->
        %{
          name: "system.disk.#{disk.mount}",
          label: "disk usage of #{disk.mount}",
          value: disk.used_ratio,
          kind: :limit,
          unit: :ratio,
          anomaly_type: "disk_usage_high",
          warn: 0.9,
          critical: 0.95,
          sustain: 1,
          entities: [{"resource", "disk:" <> disk.mount}]
        }
      end)

    [
      %{
        name: "system.load_per_core",
        label: "CPU load per core (1 min)",
        value: s.load1 / s.cores,
        kind: :limit,
        unit: :decimal,
        anomaly_type: "cpu_load_high",
        warn: 1.5,
        critical: 3.0,
        sustain: 2,
        entities: [{"resource", "cpu"}]
      }
    ] ++ memory ++ disks
  end

  @impl true
  def summarize(finding, %{name: "system.load_per_core"}) do
    "CPU load at #{Float.round(finding.value, 2)} per core over 1 minute, above #{finding.threshold}"
  end

  def summarize(finding, metric), do: Beamlens.Domain.default_summary(finding, metric)

  @impl true
  def hypothesis("cpu_load_high"),
    do: "The host's CPUs are saturated, by the VM or by other processes."

  def hypothesis("system_memory_high"),
    do: "The host is close to running out of memory; the OOM killer may strike."

  def hypothesis("disk_usage_high"),
    do: "A disk is nearly full: logs, uploads or temporary files are accumulating."

  def hypothesis(_), do: nil

  @impl true
  def callbacks do
    [
      %{
        name: "memory",
        args: "()",
        doc:
          "System memory data from memsup (bytes): total, free, available, buffered, cached. Cheap.",
        fun: fn ->
          ensure_os_mon!()
          Map.new(:memsup.get_system_memory_data())
        end
      },
      %{
        name: "disks",
        args: "()",
        doc:
          "Mounted filesystems with size (KiB) and percent used, as last polled by disksup. Cheap.",
        fun: fn ->
          ensure_os_mon!()

          for {mount, kbytes, pct} <- :disksup.get_disk_data(),
              do: %{mount: to_string(mount), kbytes: kbytes, used_percent: pct}
        end
      },
      %{
        name: "load",
        args: "()",
        doc:
          "CPU load averages over 1, 5 and 15 minutes (per host, not per core) and the core count. Cheap.",
        fun: fn ->
          ensure_os_mon!()

          %{
            load1: :cpu_sup.avg1() / 256,
            load5: :cpu_sup.avg5() / 256,
            load15: :cpu_sup.avg15() / 256,
            cores: :erlang.system_info(:logical_processors_available)
          }
        end
      }
    ]
  end

  defp ensure_os_mon! do
    case Application.ensure_all_started(:os_mon) do
      {:ok, _} -> :ok
      {:error, reason} -> raise os_mon_error(reason)
    end
  end

  @doc false
  # What the host must do, for each way starting :os_mon fails.
  @spec os_mon_error(term()) :: String.t()
  def os_mon_error({:os_mon, {~c"no such file or directory", ~c"os_mon.app"}}) do
    "the :system watcher needs OTP's :os_mon application, which is not on the code path: " <>
      "add it to your application's mix.exs, `extra_applications: [:logger, :os_mon]` " <>
      "(Mix 1.15+ and releases only ship the applications a project declares; BeamLens does " <>
      "not declare it, so that hosts without this watcher do not start it). If it is still " <>
      "missing, install it: on Debian/Ubuntu `apt-get install erlang-os-mon`"
  end

  def os_mon_error(reason) do
    "the :system watcher needs OTP's :os_mon application, which failed to start: " <>
      inspect(reason)
  end
end
