defmodule Beamlens.Schema do
  @moduledoc """
  The one option schema every BeamLens option set is declared in: the
  options of `Beamlens` and of each watcher, the coordinator, the LLM
  providers, the Lua sandbox, the redactor, the Ecto domain, the stores
  and `Beamlens.investigate/2`.

  A schema is a keyword list of `key => spec`. A spec is a keyword list:

    * `:type` - what the value must be (see `t:type/0`). Required.
    * `:default` - the value used when the key is absent. A key whose
      default is `nil` also accepts `nil`.
    * `:required` - `true` when the key must be given.
    * `:doc` - one or more sentences rendered by `docs/2`.
    * `:doc_default` - text shown instead of the default in the docs (for
      a default resolved elsewhere, such as the application environment).
    * `:expected` - how the type is described in errors, instead of the
      generated text.
    * `:validate` - a further check once the type matches: a function or
      `{module, function, extra_args}` called with the value (and the extra
      arguments), returning `:ok`, `{:ok, new_value}`, `:error` (reported
      like a wrong type, with `:expected`) or `{:error, message}` (the
      whole error message).
    * `:secret` - `true` when the value must never be shown: errors then
      say what kind of term it was instead.

  `validate/3` returns the options with every default filled in, in schema
  order, or the first error as a `Beamlens.Error` of kind `:bad_argument`
  whose message names the option, what was expected and what was given,
  and whose details hold `"path"` (the keys down to the bad one),
  `"reason"` (`"not_keyword"`, `"unknown_option"`, `"required"` or
  `"invalid_value"`) and, for an unknown key, `"suggestion"` (the closest
  known key or `nil`).

      iex> schema = [interval: [type: :pos_integer, default: 30_000, doc: "Milliseconds."]]
      iex> Beamlens.Schema.validate([], schema)
      {:ok, [interval: 30_000]}
      iex> {:error, error} = Beamlens.Schema.validate([intervall: 5], schema)
      iex> error.message
      "unknown option :intervall (did you mean :interval?). Known options: :interval"

  ## Wording

  The third argument of `validate/3` words the errors of one option set:

    * `:label` - what an option is called, `"option"` by default
      (`"BeamLens option"`, `":redact option"`).
    * `:context` - text after the key in "unknown" errors
      (`" for Beamlens.Coordinator"`).
    * `:of` - what the whole list is called when it is not a keyword list,
      `"the options"` by default.
    * `:unknown`, `:invalid`, `:missing`, `:not_keyword` - message
      templates with `%{label}`, `%{key}`, `%{context}`, `%{hint}`,
      `%{known}`, `%{subject}`, `%{expected}`, `%{of}` and `%{value}`
      placeholders; the defaults are
      `"unknown %{label} %{key}%{context}%{hint}. Known options: %{known}"`,
      `"expected %{subject} to be %{expected}, got: %{value}"`,
      `"the %{subject} option is required%{context}"` and
      `"expected %{of} to be a keyword list, got: %{value}"`.
    * `:defaults` - values that take the place of the schema's defaults
      (a watcher inherits the top-level settings this way).
  """

  alias Beamlens.Error

  @typedoc """
  The type of an option's value:

    * `:any`, `:atom`, `:module` (a non-nil atom), `:boolean`, `:map`,
      `:string` (a non-empty binary), `:binary` (any binary), `:keyword` (any keyword list),
      `:pos_integer`, `:non_neg_integer`, `:float`, `:number`;
    * `{:integer, min, max}` - an integer in `min..max`;
    * `{:in, values}` - one of `values`;
    * `{:or, types}` - any of `types`;
    * `{:list, type}` - a list whose every element is of `type`;
    * `{:fun, arity}` - a function of that arity;
    * `{:struct, module}` - a struct of that module;
    * `{:tuple, types}` - a tuple of that size, each element of its type;
    * `{:keyword, schema}` - a nested keyword list, validated against
      `schema` (its defaults filled in).
  """
  @type type ::
          :any
          | :atom
          | :module
          | :boolean
          | :map
          | :string
          | :binary
          | :keyword
          | :pos_integer
          | :non_neg_integer
          | :float
          | :number
          | {:integer, integer(), integer()}
          | {:in, [term()]}
          | {:or, [type()]}
          | {:list, type()}
          | {:fun, non_neg_integer()}
          | {:struct, module()}
          | {:tuple, [type()]}
          | {:keyword, t()}

  @typedoc "One option's spec; see the module docs."
  @type spec :: keyword()

  @typedoc "A schema: option names and their specs, in documentation order."
  @type t :: [{atom(), spec()}]

  @typedoc "The wording of one option set's errors; see the module docs."
  @type wording :: keyword()

  @unknown "unknown %{label} %{key}%{context}%{hint}. Known options: %{known}"
  @invalid "expected %{subject} to be %{expected}, got: %{value}"
  @missing "the %{subject} option is required%{context}"
  @not_keyword "expected %{of} to be a keyword list, got: %{value}"

  @doc """
  Validates `opts` against `schema`. Returns `{:ok, resolved}`, the options
  in schema order with every default filled in (keys without a value or a
  default are left out), or `{:error, %Beamlens.Error{}}` for the first
  problem found.
  """
  @spec validate(term(), t(), wording()) :: {:ok, keyword()} | {:error, Error.t()}
  def validate(opts, schema, wording \\ []) do
    validate_at(opts, schema, wording, [])
  end

  @doc """
  Like `validate/3`, but returns the resolved options or raises
  `ArgumentError` with the same message.
  """
  @spec validate!(term(), t(), wording()) :: keyword()
  def validate!(opts, schema, wording \\ []) do
    case validate(opts, schema, wording) do
      {:ok, resolved} -> resolved
      {:error, error} -> raise ArgumentError, error.message
    end
  end

  @doc """
  The closest of `candidates` to `name` (by Jaro distance, above 0.8), or
  `nil`.

      iex> Beamlens.Schema.suggest(:intervall, [:interval, :warmup])
      :interval
      iex> Beamlens.Schema.suggest(:zzz, [:interval, :warmup])
      nil
  """
  @spec suggest(atom() | String.t(), [atom() | String.t()]) :: atom() | String.t() | nil
  def suggest(name, candidates) do
    name = to_string(name)

    candidates
    |> Enum.map(&{&1, String.jaro_distance(name, to_string(&1))})
    |> Enum.filter(fn {_, score} -> score > 0.8 end)
    |> Enum.max_by(fn {_, score} -> score end, fn -> nil end)
    |> case do
      nil -> nil
      {candidate, _} -> candidate
    end
  end

  @doc """
  The "did you mean" hint for `name`: `" (did you mean :x?)"`, or `""`
  when no candidate is close.

      iex> Beamlens.Schema.did_you_mean(:etss, [:beam, :ets])
      " (did you mean :ets?)"
  """
  @spec did_you_mean(atom() | String.t(), [atom() | String.t()]) :: String.t()
  def did_you_mean(name, candidates) do
    case suggest(name, candidates) do
      nil -> ""
      candidate -> " (did you mean #{inspect(candidate)}?)"
    end
  end

  @doc """
  The defaults of `schema` as a keyword list (keys without a default are
  left out; nested keyword schemas are not expanded).
  """
  @spec defaults(t()) :: keyword()
  def defaults(schema) do
    for {key, spec} <- schema, Keyword.has_key?(spec, :default), do: {key, spec[:default]}
  end

  @doc """
  Renders `schema` as a Markdown list for a moduledoc: each option with its
  doc, its range (for bounded integers) and its default; nested keyword
  schemas as indented lists. `:indent` (default 2) is the indentation of
  the first level.

      iex> Beamlens.Schema.docs([timeout: [type: {:integer, 1, 60_000}, default: 2_000, doc: "Wall time."]])
      "  * `:timeout` - Wall time. From `1` to `60000`. Default: `2000`."
  """
  @spec docs(t(), keyword()) :: String.t()
  def docs(schema, opts \\ []) do
    indent = String.duplicate(" ", Keyword.get(opts, :indent, 2))

    Enum.map_join(schema, "\n", fn {key, spec} ->
      line =
        Enum.join(
          [
            "#{indent}* `#{inspect(key)}` -",
            spec[:doc] && sentence(spec[:doc]),
            range_doc(spec[:type]),
            default_doc(spec)
          ]
          |> Enum.reject(&(&1 in [nil, ""])),
          " "
        )

      case spec[:type] do
        {:keyword, nested} ->
          line <> "\n" <> docs(nested, indent: String.length(indent) + 4)

        _ ->
          line
      end
    end)
  end

  ## Validation

  defp validate_at(opts, schema, wording, path) do
    cond do
      not Keyword.keyword?(opts) ->
        value = if secret?(schema), do: describe_value(opts), else: show(opts)
        of = if path == [], do: Keyword.get(wording, :of, "the options"), else: render_key(path)

        template =
          if path == [], do: Keyword.get(wording, :not_keyword, @not_keyword), else: @not_keyword

        error(path, "not_keyword", render(template, wording, of: of, value: value))

      unknown = Enum.find(Keyword.keys(opts), &(not Keyword.has_key?(schema, &1))) ->
        unknown(unknown, schema, wording, path)

      true ->
        resolve(opts, schema, wording, path)
    end
  end

  defp unknown(key, schema, wording, path) do
    known = Keyword.keys(schema)
    suggestion = suggest(key, known)

    message =
      render(Keyword.get(wording, :unknown, @unknown), wording,
        key: render_key(path ++ [key]),
        hint: did_you_mean(key, known),
        known: Enum.map_join(known, ", ", &inspect/1)
      )

    {:error,
     %Error{
       kind: :bad_argument,
       message: message,
       details: %{
         "path" => path ++ [key],
         "reason" => "unknown_option",
         "suggestion" => suggestion
       }
     }}
  end

  defp resolve(opts, schema, wording, path) do
    inherited = Keyword.get(wording, :defaults, [])

    Enum.reduce_while(schema, {:ok, []}, fn {key, spec}, {:ok, acc} ->
      case fetch(opts, key, spec, inherited) do
        {:ok, value} ->
          case check(value, spec, wording, path ++ [key]) do
            {:ok, value} -> {:cont, {:ok, [{key, value} | acc]}}
            {:error, _} = error -> {:halt, error}
          end

        :missing ->
          if spec[:required] do
            message =
              render(Keyword.get(wording, :missing, @missing), wording,
                subject: subject(path ++ [key], wording)
              )

            {:halt, error(path ++ [key], "required", message)}
          else
            {:cont, {:ok, acc}}
          end
      end
    end)
    |> case do
      {:ok, acc} -> {:ok, Enum.reverse(acc)}
      error -> error
    end
  end

  defp fetch(opts, key, spec, inherited) do
    case Keyword.fetch(opts, key) do
      {:ok, value} ->
        {:ok, value}

      :error ->
        cond do
          Keyword.has_key?(inherited, key) -> {:ok, inherited[key]}
          Keyword.has_key?(spec, :default) -> {:ok, spec[:default]}
          true -> :missing
        end
    end
  end

  # A key whose default is nil accepts nil.
  defp check(nil, spec, wording, path) do
    if Keyword.has_key?(spec, :default) and is_nil(spec[:default]),
      do: {:ok, nil},
      else: check_type(nil, spec, wording, path)
  end

  defp check(value, spec, wording, path), do: check_type(value, spec, wording, path)

  defp check_type(value, spec, wording, path) do
    case spec[:type] do
      {:keyword, nested} when is_list(value) ->
        validate_at(value, nested, Keyword.drop(wording, [:defaults]), path)

      type ->
        if valid?(value, type),
          do: custom(value, spec, wording, path),
          else: invalid(value, spec, wording, path)
    end
  end

  defp invalid(value, spec, wording, path) do
    shown = if spec[:secret], do: describe_value(value), else: show(value)

    message =
      render(Keyword.get(wording, :invalid, @invalid), wording,
        key: render_key(path),
        subject: subject(path, wording),
        expected: spec[:expected] || describe(spec[:type]),
        value: shown
      )

    error(path, "invalid_value", message)
  end

  defp custom(value, spec, wording, path) do
    result =
      case spec[:validate] do
        nil -> :ok
        fun when is_function(fun, 1) -> fun.(value)
        {module, function, args} -> apply(module, function, [value | args])
      end

    case result do
      :ok -> {:ok, value}
      {:ok, value} -> {:ok, value}
      :error -> invalid(value, spec, wording, path)
      {:error, message} when is_binary(message) -> error(path, "invalid_value", message)
    end
  end

  defp error(path, reason, message) do
    {:error,
     %Error{kind: :bad_argument, message: message, details: %{"path" => path, "reason" => reason}}}
  end

  defp secret?(schema), do: Enum.any?(schema, fn {_, spec} -> spec[:secret] == true end)

  ## Types

  defp valid?(_v, :any), do: true
  defp valid?(v, :atom), do: is_atom(v)
  defp valid?(v, :module), do: is_atom(v) and not is_nil(v)
  defp valid?(v, :boolean), do: is_boolean(v)
  defp valid?(v, :map), do: is_map(v)
  defp valid?(v, :string), do: is_binary(v) and v != ""
  defp valid?(v, :binary), do: is_binary(v)
  defp valid?(v, :keyword), do: Keyword.keyword?(v)
  defp valid?(v, :pos_integer), do: is_integer(v) and v > 0
  defp valid?(v, :float), do: is_float(v)
  defp valid?(v, :number), do: is_number(v)
  defp valid?(v, :non_neg_integer), do: is_integer(v) and v >= 0
  defp valid?(v, {:integer, min, max}), do: is_integer(v) and v >= min and v <= max
  defp valid?(v, {:in, values}), do: v in values
  defp valid?(v, {:or, types}), do: Enum.any?(types, &valid?(v, &1))
  defp valid?(v, {:list, type}), do: is_list(v) and Enum.all?(v, &valid?(&1, type))
  defp valid?(v, {:fun, arity}), do: is_function(v, arity)
  defp valid?(v, {:struct, module}), do: is_struct(v, module)

  defp valid?(v, {:tuple, types}) do
    is_tuple(v) and tuple_size(v) == length(types) and
      Enum.all?(Enum.zip(Tuple.to_list(v), types), fn {e, t} -> valid?(e, t) end)
  end

  defp valid?(v, {:keyword, _}), do: Keyword.keyword?(v)

  @doc false
  # How `type` reads in an error message ("a positive integer").
  @spec describe(type()) :: String.t()
  def describe(:any), do: "any term"
  def describe(:atom), do: "an atom"
  def describe(:module), do: "a module"
  def describe(:boolean), do: "a boolean"
  def describe(:map), do: "a map"
  def describe(:string), do: "a non-empty string"
  def describe(:binary), do: "a string"
  def describe(:keyword), do: "a keyword list"
  def describe(:pos_integer), do: "a positive integer"
  def describe(:float), do: "a float"
  def describe(:number), do: "a number"
  def describe(:non_neg_integer), do: "a non-negative integer"
  def describe({:integer, 0, max}), do: "a non-negative integer (at most #{max})"
  def describe({:integer, min, max}), do: "an integer from #{min} to #{max}"
  def describe({:in, values}), do: "one of " <> Enum.map_join(values, ", ", &inspect/1)
  def describe({:or, types}), do: Enum.map_join(types, " or ", &describe/1)
  def describe({:list, type}), do: "a list of elements that are each " <> describe(type)
  def describe({:fun, arity}), do: "a function of arity #{arity}"
  def describe({:struct, module}), do: "a %#{inspect(module)}{}"

  def describe({:tuple, types}),
    do: "a tuple {" <> Enum.map_join(types, ", ", &describe/1) <> "}"

  def describe({:keyword, _}), do: "a keyword list"

  # A bad value as errors show it: bounded, so a huge term cannot flood a log.
  defp show(value), do: inspect(value, limit: 25, printable_limit: 1_024)

  # Never show a secret; say what kind of term it was.
  defp describe_value(v) when is_binary(v), do: "a string of #{byte_size(v)} bytes"
  defp describe_value(v) when is_list(v), do: "a list of #{length(v)} elements"
  defp describe_value(v) when is_integer(v), do: "an integer"
  defp describe_value(v) when is_atom(v), do: inspect(v)
  defp describe_value(_), do: "an unsupported term"

  ## Messages

  defp render_key([key]), do: inspect(key)
  defp render_key(path), do: inspect(path)

  # The key as the subject of a sentence: `:window_ms`, or
  # `BeamLens option :interval` when the set has its own label.
  defp subject(path, wording) do
    case Keyword.get(wording, :label, "option") do
      "option" -> render_key(path)
      label -> "#{label} #{render_key(path)}"
    end
  end

  defp render(template, wording, values) do
    values =
      [
        label: Keyword.get(wording, :label, "option"),
        context: Keyword.get(wording, :context, "")
      ]
      |> Keyword.merge(values)

    Regex.replace(~r/%\{(\w+)\}/, template, fn whole, name ->
      case Enum.find(values, fn {key, _} -> Atom.to_string(key) == name end) do
        {_, value} -> to_string(value)
        nil -> whole
      end
    end)
  end

  ## Docs

  defp sentence(doc) do
    doc = String.trim(doc)
    if String.ends_with?(doc, [".", "!", "?"]), do: doc, else: doc <> "."
  end

  defp range_doc({:integer, min, max}), do: "From `#{min}` to `#{max}`."
  defp range_doc(_), do: nil

  defp default_doc(spec) do
    cond do
      spec[:doc_default] -> "Default: #{sentence(spec[:doc_default])}"
      Keyword.get(spec, :default) == nil -> nil
      match?({:keyword, _}, spec[:type]) and spec[:default] == [] -> nil
      true -> "Default: `#{inspect(spec[:default])}`."
    end
  end
end
