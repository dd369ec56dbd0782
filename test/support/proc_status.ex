defmodule Beamlens.ProcStatus do
  @moduledoc """
  Memory of this OS process as the kernel sees it (`/proc/self/status`),
  for tests that bound what native code may allocate outside the BEAM's
  own allocators.

      {result, usage} = Beamlens.ProcStatus.measure(fn -> Beamlens.Lua.eval(code) end)
      assert usage.peak_growth_kb < 64 * 1024

  `measure/1` resets the kernel's high-water mark (`VmHWM`) through
  `/proc/self/clear_refs` where that is allowed, and otherwise samples
  `VmRSS` every millisecond while the function runs.
  """

  @typedoc "Kilobytes, as /proc reports them."
  @type kb :: non_neg_integer()

  @typedoc "What `measure/1` saw."
  @type usage :: %{
          wall_ms: non_neg_integer(),
          rss_before_kb: kb(),
          rss_after_kb: kb(),
          peak_kb: kb(),
          peak_growth_kb: integer(),
          method: :hwm | :sampled
        }

  @doc "`VmRSS` and `VmHWM` of this OS process, in kB."
  @spec read() :: %{vm_rss_kb: kb(), vm_hwm_kb: kb()}
  def read do
    status = File.read!("/proc/self/status")
    %{vm_rss_kb: field(status, "VmRSS"), vm_hwm_kb: field(status, "VmHWM")}
  end

  @doc "Resets `VmHWM` to the current RSS. Returns `:ok` or `{:error, reason}`."
  @spec reset_hwm() :: :ok | {:error, term()}
  def reset_hwm do
    File.write("/proc/self/clear_refs", "5")
  end

  @doc """
  Runs `fun` and returns `{its result, usage}`: wall time, RSS before and
  after, and the peak RSS while it ran (`peak_growth_kb` is the peak above
  the RSS before).
  """
  @spec measure((() -> result)) :: {result, usage()} when result: term()
  def measure(fun) when is_function(fun, 0) do
    :erlang.garbage_collect()
    before = read().vm_rss_kb

    {method, sampler} =
      case reset_hwm() do
        :ok -> {:hwm, nil}
        {:error, _} -> {:sampled, start_sampler()}
      end

    started = System.monotonic_time(:millisecond)
    result = fun.()
    wall_ms = System.monotonic_time(:millisecond) - started
    status = read()

    peak =
      case method do
        :hwm -> status.vm_hwm_kb
        :sampled -> max(stop_sampler(sampler), status.vm_rss_kb)
      end

    {result,
     %{
       wall_ms: wall_ms,
       rss_before_kb: before,
       rss_after_kb: status.vm_rss_kb,
       peak_kb: peak,
       peak_growth_kb: peak - before,
       method: method
     }}
  end

  defp field(status, name) do
    case Regex.run(~r/^#{name}:\s+(\d+) kB$/m, status) do
      [_, kb] -> String.to_integer(kb)
      nil -> 0
    end
  end

  defp start_sampler do
    parent = self()
    spawn_link(fn -> sample(parent, 0) end)
  end

  defp sample(parent, peak) do
    peak = max(peak, read().vm_rss_kb)

    receive do
      {:stop, ^parent, ref} -> send(parent, {ref, peak})
    after
      1 -> sample(parent, peak)
    end
  end

  defp stop_sampler(sampler) do
    ref = make_ref()
    send(sampler, {:stop, self(), ref})

    receive do
      {^ref, peak} -> peak
    end
  end
end
