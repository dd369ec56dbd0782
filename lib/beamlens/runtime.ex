defmodule Beamlens.Runtime do
  # `config :beamlens, :native, ...`, read once when the NIF loads.
  @native_options [
    worker_threads: [
      type: :pos_integer,
      default: 2,
      doc: "Threads of the native (tokio) runtime; BeamLens mostly waits on the network."
    ],
    job_capacity: [
      type: :pos_integer,
      default: 4096,
      doc: "Most native jobs in flight; more are refused with `:busy`."
    ]
  ]

  @moduledoc """
  The native runtime behind BeamLens: status, and waiting for async jobs.

  Slow native work (LLM requests, Lua runs) never holds an Erlang scheduler.
  A native function starts a job on a shared Rust (tokio) runtime and returns
  `{:ok, ref}` at once; the job later sends `{ref, result}` to the caller.
  When too many jobs are in flight the start fails with `{:error, :busy}`
  instead of queueing without bound.
  """

  alias Beamlens.{Error, Native}

  @typedoc "Counters of the native runtime."
  @type status :: %{
          worker_threads: pos_integer(),
          job_capacity: pos_integer(),
          jobs_in_flight: non_neg_integer(),
          jobs_started: non_neg_integer(),
          jobs_busy_rejected: non_neg_integer()
        }

  @doc """
  Returns the runtime's counters, or an error if the NIF is not loaded.

  The runtime is configured once, when the NIF loads, from
  `config :beamlens, :native, ...`:

  #{Beamlens.Schema.docs(@native_options)}

  A value that is not a positive integer makes the NIF fail to load (see
  `Beamlens.Native`'s load error in the logs).
  """
  @spec status() :: {:ok, status()} | {:error, Error.t()}
  def status do
    {:ok, Native.runtime_status()}
  rescue
    e in ErlangError -> {:error, not_loaded(e)}
  end

  @doc false
  # The defaults of `config :beamlens, :native`, merged into the NIF's load
  # info (at compile time: the NIF loads before this module may be).
  @spec native_defaults() :: %{atom() => pos_integer()}
  def native_defaults, do: Map.new(Beamlens.Schema.defaults(@native_options))

  @doc """
  Returns `true` when the native library is loaded.
  """
  @spec loaded?() :: boolean()
  def loaded?, do: match?({:ok, _}, status())

  @doc """
  Waits up to `timeout` ms for the reply of the async job `ref` and returns
  its result with errors as `Beamlens.Error` exceptions.

  On timeout the job keeps running and its reply will still arrive later as
  `{ref, result}`; long-lived processes should ignore such stray messages.
  """
  @spec await(reference(), timeout()) :: {:ok, term()} | {:error, Error.t()}
  def await(ref, timeout \\ 5_000) when is_reference(ref) do
    receive do
      {^ref, result} -> Error.wrap(result)
    after
      timeout ->
        {:error,
         %Error{
           kind: :timeout,
           message: "no reply from native job within #{timeout} ms",
           details: %{"timeout_ms" => timeout}
         }}
    end
  end

  @doc false
  @spec not_loaded(Exception.t()) :: Error.t()
  def not_loaded(exception) do
    reason = Native.load_error()

    message =
      if reason do
        "the BeamLens NIF could not be loaded: #{inspect(reason)}"
      else
        "the BeamLens NIF is not loaded (#{Exception.message(exception)})"
      end

    %Error{kind: :nif_not_loaded, message: message}
  end
end
