defmodule Beamlens.TestApp do
  @moduledoc """
  Starts a throwaway OTP application whose top supervisor has the given
  children: a host application's supervision tree, as the `:sup` domain
  finds them through `:application.which_applications/0`.
  """

  use Application

  @impl true
  def start(_type, {:process, {m, f, a}}), do: apply(m, f, a)
  def start(_type, {children, opts}), do: Supervisor.start_link(children, opts)

  @doc """
  Loads and starts application `name` (an atom the test chooses) with
  `children` under a supervisor started with `sup_opts`; stops and unloads
  it when the test exits. Returns the top supervisor's pid. With
  `{:process, {m, f, a}}` as children, the application's top process is
  whatever `m.f(a...)` starts (`{:ok, pid}`), supervisor or not.
  """
  def start!(name, children, sup_opts \\ [strategy: :one_for_one]) when is_atom(name) do
    spec = [
      description: ~c"BeamLens test application",
      vsn: ~c"0.0.0",
      modules: [],
      registered: [],
      applications: [:kernel, :stdlib],
      mod: {__MODULE__, mod_arg(children, sup_opts)}
    ]

    :ok = :application.load({:application, name, spec})
    :ok = Application.start(name)

    ExUnit.Callbacks.on_exit(fn ->
      Application.stop(name)
      :application.unload(name)
    end)

    {pid, _module} = :application_master.get_child(:application_controller.get_master(name))
    pid
  end

  defp mod_arg({:process, mfa}, _sup_opts), do: {:process, mfa}
  defp mod_arg(children, sup_opts), do: {children, sup_opts}
end
