defmodule Beamlens.SpecsTest do
  # Every public function of a public module has a @spec (issue 14, STYLE.md).
  #
  # Which modules: `Beamlens` and every `Beamlens.*` module compiled from lib/
  # (not test/support) whose @moduledoc is not false.
  #
  # Which functions: every exported function (`__info__(:functions)`), except
  #   * what the compiler generates: `__struct__/0,1` (defstruct) and
  #     `behaviour_info/1` (@callback);
  #   * a callback of a behaviour the module declares (`@behaviour`, or `use
  #     GenServer` and friends), and `child_spec/1` and `start_link/N`, when its
  #     doc is hidden (`@impl true` or `@doc false`): the behaviour's
  #     @callback is its spec. A callback with its own @doc is API and needs
  #     its own @spec; so does the `child_spec/1` that `use GenServer`
  #     generates with a doc, since users put it in their supervision tree.
  #   * arities that exist only through default arguments: the spec of the
  #     full arity covers `f(a, b \\ 1)`'s f/1.
  # There is no exemption list: a function without a spec fails the test.
  use ExUnit.Case, async: true

  test "every public function of a public module has a @spec" do
    missing = Enum.flat_map(public_modules(), &missing_specs/1)

    assert missing == [],
           "#{length(missing)} public functions have no @spec:\n  " <>
             Enum.join(missing, "\n  ")
  end

  test "the check sees the public modules and their specs" do
    modules = public_modules()
    assert Beamlens in modules
    assert Beamlens.Alert in modules
    refute Beamlens.Native in modules
    refute Beamlens.WatcherCase in modules
  end

  defp public_modules do
    {:ok, modules} = :application.get_key(:beamlens, :modules)

    modules
    |> Enum.filter(&(beamlens_module?(&1) and from_lib?(&1)))
    |> Enum.filter(&(moduledoc(&1) != :hidden))
    |> Enum.sort()
  end

  defp beamlens_module?(module) do
    name = Atom.to_string(module)
    name == "Elixir.Beamlens" or String.starts_with?(name, "Elixir.Beamlens.")
  end

  # The :test build also compiles test/support (elixirc_paths). The source
  # path is absolute and names the checkout that compiled the module, which
  # need not be this one, so look at its tail only.
  defp from_lib?(module) do
    Code.ensure_loaded!(module)
    source = module.module_info(:compile)[:source] |> List.to_string()
    String.contains?(source, "/lib/") and not String.contains?(source, "/test/support/")
  end

  defp moduledoc(module) do
    case Code.fetch_docs(module) do
      {:docs_v1, _anno, _lang, _format, moduledoc, _meta, _docs} -> moduledoc
      {:error, reason} -> flunk("#{inspect(module)} has no docs chunk: #{inspect(reason)}")
    end
  end

  defp missing_specs(module) do
    {:docs_v1, _, _, _, _, _, docs} = Code.fetch_docs(module)

    specced =
      case Code.Typespec.fetch_specs(module) do
        {:ok, specs} -> MapSet.new(specs, fn {name_arity, _} -> name_arity end)
        :error -> MapSet.new()
      end

    doc_of =
      Map.new(docs, fn {{_kind, name, arity}, _, _, doc, meta} -> {{name, arity}, {doc, meta}} end)

    callbacks = behaviour_callbacks(module)
    covered = covered_by_defaults(docs, specced)

    for {name, arity} = fun <- module.__info__(:functions),
        not generated?(fun),
        not MapSet.member?(specced, fun),
        not MapSet.member?(covered, fun),
        not hidden_callback?(fun, callbacks, doc_of) do
      "#{inspect(module)}.#{name}/#{arity}"
    end
  end

  defp generated?({:__struct__, arity}) when arity in [0, 1], do: true
  defp generated?({:behaviour_info, 1}), do: true
  defp generated?(_), do: false

  defp behaviour_callbacks(module) do
    module.module_info(:attributes)
    |> Keyword.get_values(:behaviour)
    |> List.flatten()
    |> Enum.flat_map(fn behaviour ->
      Code.ensure_loaded!(behaviour)

      behaviour.behaviour_info(:callbacks) ++
        behaviour.behaviour_info(:optional_callbacks)
    end)
    |> MapSet.new()
  end

  defp hidden_callback?({name, _arity} = fun, callbacks, doc_of) do
    lifecycle? = MapSet.member?(callbacks, fun) or name in [:child_spec, :start_link]
    lifecycle? and hidden?(doc_of[fun])
  end

  defp hidden?({:hidden, _meta}), do: true
  defp hidden?({_doc, _meta}), do: false
  # No docs entry at all (e.g. a function a macro defines without docs).
  defp hidden?(nil), do: true

  # `def f(a, b \\ 1)` exports f/1 and f/2; its docs entry is f/2 with
  # `defaults: 1`. A spec of f/2 covers f/1.
  defp covered_by_defaults(docs, specced) do
    for {{:function, name, arity}, _, _, _, %{defaults: defaults}} <- docs,
        MapSet.member?(specced, {name, arity}),
        lower <- (arity - defaults)..(arity - 1)//1,
        into: MapSet.new(),
        do: {name, lower}
  end
end
