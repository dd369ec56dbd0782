defmodule Beamlens.Error do
  @moduledoc """
  An error reported by the BeamLens native core.

  The Rust core reports every failure as a tagged tuple
  `{kind, message, details}`; `from_native/1` turns it into this exception.
  Subsystems with their own failure modes (the LLM client, the Lua sandbox)
  have their own exception structs built on the same tuple.

  Fields:

    * `:kind` - an atom from a fixed list: `:busy` (too many native jobs in
      flight), `:panic` (a bug in native code, caught; the VM is unaffected),
      `:bad_argument`, `:timeout`, `:shutdown`, `:nif_not_loaded`.
    * `:message` - a readable explanation. Never contains secrets.
    * `:details` - a map of machine-readable fields (for example
      `%{"capacity" => 4096}` for `:busy`).
  """

  @type kind :: :busy | :panic | :bad_argument | :timeout | :shutdown | :nif_not_loaded | atom()
  @type t :: %__MODULE__{kind: kind(), message: String.t(), details: map()}

  defexception [:kind, :message, details: %{}]

  @impl true
  def message(%__MODULE__{kind: kind, message: message}), do: "(#{kind}) #{message}"

  @doc """
  Builds an exception from the tuple the native core sends.

      iex> Beamlens.Error.from_native({:timeout, "timed out after 5 ms", %{"timeout_ms" => 5}})
      %Beamlens.Error{kind: :timeout, message: "timed out after 5 ms", details: %{"timeout_ms" => 5}}

      iex> Beamlens.Error.from_native(:busy).kind
      :busy
  """
  @spec from_native(term()) :: t()
  def from_native({kind, message, details})
      when is_atom(kind) and is_binary(message) and is_map(details) do
    %__MODULE__{kind: kind, message: message, details: details}
  end

  def from_native(:busy), do: from_native(busy())

  def from_native(other) do
    %__MODULE__{kind: :unknown, message: "unexpected native error: #{inspect(other)}"}
  end

  @doc """
  The one shape of "busy". The native core refuses a job in two wire
  shapes: `:busy` when no job slot is free (the reply of an async NIF) and
  `{:busy, message, %{"capacity" => n}}` from its error type. Every
  `from_native/1` (this module's, `Beamlens.LuaError`'s,
  `Beamlens.LLMError`'s) turns the first into the second with this, so a
  caller gets the same exception whichever way the core refused.

      iex> {:busy, message, %{"capacity" => capacity}} = Beamlens.Error.busy()
      iex> message == "the native job queue is full (\#{capacity} jobs in flight)"
      true
  """
  @spec busy() :: {:busy, String.t(), map()}
  def busy do
    case Beamlens.Runtime.status() do
      {:ok, %{job_capacity: capacity}} ->
        {:busy, "the native job queue is full (#{capacity} jobs in flight)",
         %{"capacity" => capacity}}

      {:error, _} ->
        {:busy, "the native job queue is full", %{}}
    end
  end

  @doc """
  Normalises a native result: `{:ok, value}` passes through, any error
  becomes `{:error, %Beamlens.Error{}}`.
  """
  @spec wrap({:ok, term()} | {:error, term()}) :: {:ok, term()} | {:error, t()}
  def wrap({:ok, _} = ok), do: ok
  def wrap({:error, %_{__exception__: true}} = error), do: error
  def wrap({:error, reason}), do: {:error, from_native(reason)}
end
