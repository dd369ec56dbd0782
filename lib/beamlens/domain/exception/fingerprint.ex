defmodule Beamlens.Domain.Exception.Fingerprint do
  @moduledoc """
  What an exception is, reduced to what `Beamlens.Domain.Exception.ExceptionStore`
  keeps of it and the key it groups it by. Pure functions, run in the
  reporting process (`Beamlens.Domain.Exception.TowerReporter`,
  `Beamlens.Domain.Exception.LoggerHandler`) and in the store.

    * `event/3` classifies a crash (`:error`, `:exit`, `:throw`, `:message`),
      names its exception module, caps its message at 2 KiB and keeps at
      most 20 stack frames. Argument values are never kept: a frame holds
      the shapes of its arguments (`<binary, 12 bytes>`, `<map, 3 keys>`),
      atoms only.
    * `key/4` is the similarity key of a group: kind, exception module, the
      `normalize/1`d message and the top three frames.
  """

  alias Beamlens.Redactor

  @max_message 2_048
  @max_frames 20

  @typedoc "A stack frame as the store keeps it."
  @type frame :: %{
          module: String.t() | nil,
          function: String.t(),
          arity: non_neg_integer(),
          args: [String.t()] | nil,
          file: String.t() | nil,
          line: non_neg_integer() | nil
        }

  @typedoc "A crash reduced for the store: see `event/3`."
  @type event :: %{
          kind: :error | :exit | :throw | :message,
          exception: String.t() | nil,
          message: String.t(),
          frames: [frame()],
          modules: [module()]
        }

  @doc """
  Reduces a crash (`kind`, `reason`, stack trace) to what the store keeps:
  its kind, exception module name, capped message, frames and the modules
  of its stack (to find the application module it is rooted in).

      iex> event = Beamlens.Domain.Exception.Fingerprint.event(:error, %KeyError{key: :id, term: %{}}, [])
      iex> {event.kind, event.exception, event.frames}
      {:error, "KeyError", []}
  """
  @spec event(atom(), term(), term()) :: event()
  def event(kind, reason, stacktrace) do
    {kind, exception, stacktrace} = classify(kind, reason, stacktrace)

    %{
      kind: kind,
      exception: exception,
      message: message(kind, reason),
      frames: frames(stacktrace),
      modules: stack_modules(stacktrace)
    }
  end

  @doc """
  The kind (`:error`, `:exit`, `:throw` or `:message`; anything else counts
  as `:exit`), the exception module name (errors only) and the stack trace
  (a list, `[]` when it is not one).

      iex> Beamlens.Domain.Exception.Fingerprint.classify(:error, :badarg, nil)
      {:error, "ArgumentError", []}
      iex> Beamlens.Domain.Exception.Fingerprint.classify(:exit, :killed, [])
      {:exit, nil, []}
      iex> Beamlens.Domain.Exception.Fingerprint.classify(:weird, :killed, [])
      {:exit, nil, []}
  """
  @spec classify(atom(), term(), term()) :: {atom(), String.t() | nil, list()}
  def classify(:error, reason, stacktrace) do
    stacktrace = stacktrace(stacktrace)
    exception = Exception.normalize(:error, reason, stacktrace)

    if is_exception(exception),
      do: {:error, exception_name(exception), stacktrace},
      else: {:error, nil, stacktrace}
  end

  def classify(kind, _reason, stacktrace) when kind in [:exit, :throw, :message],
    do: {kind, nil, stacktrace(stacktrace)}

  def classify(_kind, _reason, stacktrace), do: {:exit, nil, stacktrace(stacktrace)}

  defp stacktrace(list) when is_list(list), do: list
  defp stacktrace(_), do: []

  defp exception_name(%module{}), do: Beamlens.Domain.id(module)

  @doc """
  The message of a crash of a classified `kind`, capped at 2 KiB. Never
  raises.

      iex> Beamlens.Domain.Exception.Fingerprint.message(:throw, {:halt, 1})
      "throw: {:halt, 1}"
  """
  @spec message(atom(), term()) :: String.t()
  def message(:error, reason) do
    exception = Exception.normalize(:error, reason, [])

    text =
      if is_exception(exception),
        do: Exception.message(exception),
        else: inspect(reason, limit: 20, printable_limit: @max_message)

    cap(text)
  rescue
    _ -> "(message unavailable)"
  end

  def message(:exit, reason) do
    cap(Exception.format_exit(reason))
  rescue
    _ -> cap(inspect(reason, limit: 20, printable_limit: @max_message))
  end

  def message(:throw, reason),
    do: cap("throw: " <> inspect(reason, limit: 20, printable_limit: @max_message))

  def message(:message, reason) when is_binary(reason), do: cap(reason)

  def message(:message, reason) do
    cap(IO.chardata_to_string(reason))
  rescue
    _ -> cap(inspect(reason, limit: 20, printable_limit: @max_message))
  end

  defp cap(text) when byte_size(text) <= @max_message, do: text
  defp cap(text), do: Redactor.truncate(text, @max_message)

  @doc """
  The first 20 frames of a stack trace, argument values replaced by their
  shapes. Never raises.

      iex> [frame] = Beamlens.Domain.Exception.Fingerprint.frames([{Map, :fetch!, [%{a: 1}, "secret"], [file: ~c"lib/map.ex", line: 3]}])
      iex> frame
      %{module: "Map", function: "fetch!", arity: 2, args: ["<map, 1 keys>", "<binary, 6 bytes>"], file: "lib/map.ex", line: 3}
  """
  @spec frames(list()) :: [frame()]
  def frames(stacktrace) do
    stacktrace
    |> Enum.take(@max_frames)
    |> Enum.flat_map(fn
      {module, function, arity_or_args, location} when is_atom(module) ->
        {arity, args} =
          if is_list(arity_or_args),
            do: {length(arity_or_args), Enum.map(arity_or_args, &shape/1)},
            else: {arity_or_args, nil}

        [
          %{
            module: Beamlens.Domain.id(module),
            function: function_name(function),
            arity: arity,
            args: args,
            file: location_file(location),
            line: location[:line]
          }
        ]

      {fun, arity_or_args, location} when is_function(fun) ->
        [
          %{
            module: nil,
            function: inspect(fun),
            arity: if(is_list(arity_or_args), do: length(arity_or_args), else: arity_or_args),
            args: nil,
            file: location_file(location),
            line: location[:line]
          }
        ]

      _ ->
        []
    end)
  rescue
    _ -> []
  end

  @doc "The modules of the first 20 frames of a stack trace, in order."
  @spec stack_modules(list()) :: [module()]
  def stack_modules(stacktrace) do
    for {module, _, _, _} when is_atom(module) <- Enum.take(stacktrace, @max_frames), do: module
  end

  defp function_name(name) when is_atom(name), do: Atom.to_string(name)
  defp function_name(other), do: inspect(other)

  defp location_file(location) when is_list(location) do
    case location[:file] do
      nil -> nil
      file -> file |> to_string() |> String.slice(0, 200)
    end
  end

  defp location_file(_), do: nil

  # Argument values are never kept: only their shape.
  defp shape(value) when is_atom(value), do: Beamlens.Domain.id(value)
  defp shape(value) when is_binary(value), do: "<binary, #{byte_size(value)} bytes>"
  defp shape(value) when is_integer(value), do: "<integer>"
  defp shape(value) when is_float(value), do: "<float>"
  defp shape(value) when is_list(value), do: "<list, #{length(value)} items>"
  defp shape(%module{}), do: "<%#{Beamlens.Domain.id(module)}{}>"
  defp shape(value) when is_map(value), do: "<map, #{map_size(value)} keys>"
  defp shape(value) when is_tuple(value), do: "<tuple, #{tuple_size(value)} elements>"
  defp shape(value) when is_pid(value), do: inspect(value)
  defp shape(value) when is_function(value), do: "<function>"
  defp shape(_value), do: "<term>"

  @doc "A frame with its argument shapes passed through `Beamlens.Redactor`."
  @spec redact_frame(frame()) :: frame()
  def redact_frame(frame), do: %{frame | args: frame.args && Redactor.redact(frame.args)}

  @doc """
  A frame as one line of a stack trace.

      iex> Beamlens.Domain.Exception.Fingerprint.format_frame(%{module: "Map", function: "fetch!", arity: 2, args: nil, file: "lib/map.ex", line: 3})
      "Map.fetch!/2 (lib/map.ex:3)"
  """
  @spec format_frame(frame()) :: String.t()
  def format_frame(%{module: nil} = frame),
    do: "#{frame.function}/#{frame.arity}#{location(frame)}"

  def format_frame(%{args: args} = frame) when is_list(args),
    do: "#{frame.module}.#{frame.function}(#{Enum.join(args, ", ")})#{location(frame)}"

  def format_frame(frame),
    do: "#{frame.module}.#{frame.function}/#{frame.arity}#{location(frame)}"

  defp location(%{file: nil}), do: ""
  defp location(%{file: file, line: nil}), do: " (#{file})"
  defp location(%{file: file, line: line}), do: " (#{file}:#{line})"

  @doc """
  The message with what varies between occurrences of the same problem
  replaced: pids, references, ports, UUIDs, long hex ids, quoted strings,
  numbers.

      iex> Beamlens.Domain.Exception.Fingerprint.normalize(~s|order 42 of "bob" failed in #PID<0.12.0>|)
      ~s|order N of "…" failed in #PID<>|
  """
  @spec normalize(String.t()) :: String.t()
  def normalize(message) do
    message
    |> String.replace(~r/#(PID|Reference|Port)<[\d.]+>/, "#\\1<>")
    |> String.replace(
      ~r/\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b/i,
      "<uuid>"
    )
    |> String.replace(~r/\b[0-9a-f]{12,}\b/i, "<hex>")
    |> String.replace(~r/"(?:[^"\\]|\\.)*"/, "\"…\"")
    |> String.replace(~r/'(?:[^'\\]|\\.)*'/, "'…'")
    |> String.replace(~r/\d+(?:\.\d+)?/, "N")
  end

  @doc """
  The similarity key of an exception: its kind, exception module, message
  (normalised here) and top three frames. Two occurrences of the same
  problem have the same key.
  """
  @spec key(atom(), String.t() | nil, String.t(), [frame()]) :: non_neg_integer()
  def key(kind, exception, message, frames) do
    top = frames |> Enum.take(3) |> Enum.map(&{&1.module, &1.function, &1.arity})
    :erlang.phash2({kind, exception, normalize(message), top})
  end

  @doc "The id of a group as the read functions show it: the key in lowercase hex."
  @spec id(non_neg_integer()) :: String.t()
  def id(key), do: key |> Integer.to_string(16) |> String.downcase()
end
