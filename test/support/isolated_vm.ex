defmodule Beamlens.IsolatedVm do
  @moduledoc """
  Runs Elixir code in a separate OS process (a fresh `erl` with this test
  build's code path), under an address-space limit (`ulimit -v`), so that
  code that could abort or exhaust the VM fails a test instead of killing
  the suite.

      {:ok, value, info} =
        Beamlens.IsolatedVm.eval(~S'''
          Beamlens.Lua.eval("return 1")
        ''', memory_mb: 2048, timeout: 30_000)

  The code's value is sent back (as an external term); `info` holds the
  child's wall time and its peak RSS (`VmHWM`, in kB) just before it ended.
  A child that dies (for example SIGABRT after a failed allocation), runs
  past `:timeout` or prints no result gives `{:error, reason, output}`.
  """

  @marker "BEAMLENS_ISOLATED_RESULT:"

  @typedoc "What the child reported besides its value."
  @type info :: %{wall_ms: non_neg_integer(), vm_hwm_kb: non_neg_integer()}

  @doc """
  Evaluates `code` in a child VM. Options: `:memory_mb` (the `ulimit -v`,
  default 3072), `:timeout` (ms, default 60_000).
  """
  @spec eval(String.t(), keyword()) ::
          {:ok, term(), info()} | {:error, term(), String.t()}
  def eval(code, opts \\ []) when is_binary(code) do
    memory_kb = Keyword.get(opts, :memory_mb, 3072) * 1024
    timeout = Keyword.get(opts, :timeout, 60_000)
    dir = Path.join(System.tmp_dir!(), "beamlens_isolated_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    script = Path.join(dir, "main.exs")
    File.write!(script, wrap(code))

    erl = Path.join([:code.root_dir(), "bin", "erl"])

    paths =
      :code.get_path()
      |> Enum.map(&List.to_string/1)
      |> Enum.filter(&File.dir?/1)
      |> Enum.flat_map(&["-pa", &1])

    eval =
      ~s|{ok, _} = application:ensure_all_started(elixir), | <>
        ~s|'Elixir.Code':require_file(<<"#{script}">>), halt(0).|

    args = ["-noshell", "-noinput"] ++ paths ++ ["-eval", eval]
    command = "ulimit -v #{memory_kb}; exec \"$0\" \"$@\" 2>&1"

    port =
      Port.open({:spawn_executable, "/bin/sh"}, [
        :binary,
        :exit_status,
        :hide,
        args: ["-c", command, erl | args]
      ])

    try do
      collect(port, "", System.monotonic_time(:millisecond) + timeout)
    after
      File.rm_rf(dir)
    end
  end

  defp wrap(code) do
    """
    started = System.monotonic_time(:millisecond)
    value = (fn -> #{code}
    end).()
    wall_ms = System.monotonic_time(:millisecond) - started
    [_, hwm] = Regex.run(~r/VmHWM:\\s+(\\d+)/, File.read!("/proc/self/status"))
    info = %{wall_ms: wall_ms, vm_hwm_kb: String.to_integer(hwm)}
    IO.puts("#{@marker}" <> Base.encode64(:erlang.term_to_binary({value, info})))
    """
  end

  defp collect(port, output, deadline) do
    wait = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^port, {:data, data}} ->
        collect(port, output <> data, deadline)

      {^port, {:exit_status, 0}} ->
        case Regex.run(~r/#{@marker}(\S+)/, output) do
          [_, encoded] ->
            {value, info} = encoded |> Base.decode64!() |> :erlang.binary_to_term()
            {:ok, value, info}

          nil ->
            {:error, :no_result, output}
        end

      {^port, {:exit_status, status}} ->
        {:error, {:exit_status, status}, output}
    after
      wait ->
        {:os_pid, os_pid} = Port.info(port, :os_pid)
        System.cmd("kill", ["-9", Integer.to_string(os_pid)])
        Port.close(port)
        {:error, :timeout, output}
    end
  end
end
