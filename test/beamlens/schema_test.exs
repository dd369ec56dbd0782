defmodule Beamlens.SchemaTest do
  use ExUnit.Case, async: true

  alias Beamlens.{Error, Schema}

  doctest Beamlens.Schema

  @gate [
    window: [type: :pos_integer, default: 120, doc: "Samples in a baseline"],
    z_threshold: [type: {:or, [:pos_integer, :float]}, default: 4.0, doc: "Deviations"]
  ]

  @schema [
    interval: [type: :pos_integer, default: 30_000, doc: "Milliseconds between snapshots."],
    name: [type: :atom, required: true, doc: "The name."],
    mode: [type: {:in, [:gated, :always]}, default: :gated, doc: "When to wake the model."],
    limit: [type: {:integer, 1, 100}, default: 10, doc: "At most this many."],
    keep: [type: {:integer, 0, 50}, default: 5, doc: "Kept."],
    heartbeat: [type: {:or, [:pos_integer, {:in, [:infinity]}]}, default: 1_000],
    tags: [type: {:list, :string}, default: [], expected: "a list of strings"],
    callback: [type: {:fun, 1}, doc: "Called once."],
    summarizer: [type: :module, default: nil, doc: "A module, or nil."],
    even: [type: :pos_integer, validate: &__MODULE__.even/1, doc: "An even number."],
    port: [
      type: :pos_integer,
      validate: {__MODULE__, :below, [65_536]},
      doc: "A port."
    ],
    key: [type: :string, secret: true, doc: "A secret."],
    gate: [type: {:keyword, @gate}, default: [], doc: "Gate tuning."]
  ]

  def even(n) when rem(n, 2) == 0, do: :ok
  def even(n), do: {:error, "expected :even to be even, got: #{n}"}

  def below(n, max) when n < max, do: {:ok, n}
  def below(_n, _max), do: :error

  defp message(opts, schema \\ @schema, wording \\ []) do
    assert {:error, %Error{kind: :bad_argument, message: message}} =
             Schema.validate(opts, schema, wording)

    message
  end

  describe "validate/3" do
    test "fills defaults in schema order, nested ones too" do
      assert {:ok, resolved} = Schema.validate([name: :beam, limit: 3], @schema)

      assert resolved == [
               interval: 30_000,
               name: :beam,
               mode: :gated,
               limit: 3,
               keep: 5,
               heartbeat: 1_000,
               tags: [],
               summarizer: nil,
               gate: [window: 120, z_threshold: 4.0]
             ]

      assert {:ok, resolved} = Schema.validate([name: :x, gate: [window: 5]], @schema)
      assert resolved[:gate] == [window: 5, z_threshold: 4.0]
    end

    test "checks every type and names the key, the expected type and the value" do
      assert message(name: :x, interval: 0) ==
               "expected :interval to be a positive integer, got: 0"

      assert message(name: "x") == ~s(expected :name to be an atom, got: "x")

      assert message(name: :x, mode: :sometimes) ==
               "expected :mode to be one of :gated, :always, got: :sometimes"

      assert message(name: :x, limit: 101) ==
               "expected :limit to be an integer from 1 to 100, got: 101"

      assert message(name: :x, keep: -1) ==
               "expected :keep to be a non-negative integer (at most 50), got: -1"

      assert message(name: :x, heartbeat: :never) ==
               "expected :heartbeat to be a positive integer or one of :infinity, got: :never"

      assert {:ok, _} = Schema.validate([name: :x, heartbeat: :infinity], @schema)

      assert message(name: :x, tags: ["a", ""]) ==
               ~s(expected :tags to be a list of strings, got: ["a", ""])

      assert message(name: :x, callback: fn -> :ok end) =~
               "expected :callback to be a function of arity 1, got: #Function<"
    end

    test "a huge bad value is shown bounded" do
      message = message(name: :x, interval: Enum.to_list(1..100_000))
      assert message =~ "expected :interval to be a positive integer, got: [1, 2, 3,"
      assert byte_size(message) < 300
    end

    test "a key whose default is nil accepts nil" do
      assert {:ok, resolved} = Schema.validate([name: :x, summarizer: nil], @schema)
      assert resolved[:summarizer] == nil
      assert message(name: :x, summarizer: "S") =~ "expected :summarizer to be a module"
    end

    test "required keys" do
      assert {:error, %Error{message: message, details: details}} = Schema.validate([], @schema)
      assert message == "the :name option is required"
      assert details == %{"path" => [:name], "reason" => "required"}
    end

    test "custom validators: a function or an MFA, with their own message or the type's" do
      assert {:ok, resolved} = Schema.validate([name: :x, even: 4, port: 80], @schema)
      assert resolved[:even] == 4
      assert resolved[:port] == 80
      assert message(name: :x, even: 3) == "expected :even to be even, got: 3"

      assert message(name: :x, port: 70_000) ==
               "expected :port to be a positive integer, got: 70000"
    end

    test "nested keyword schemas name the path" do
      assert {:error, %Error{message: message, details: details}} =
               Schema.validate([name: :x, gate: [window: 0]], @schema)

      assert message == "expected [:gate, :window] to be a positive integer, got: 0"
      assert details == %{"path" => [:gate, :window], "reason" => "invalid_value"}

      assert message(name: :x, gate: [windw: 3]) ==
               "unknown option [:gate, :windw] (did you mean :window?). Known options: :window, :z_threshold"

      assert message(name: :x, gate: :loud) ==
               "expected :gate to be a keyword list, got: :loud"
    end

    test "unknown keys get the closest known key as a hint" do
      assert {:error, %Error{message: message, details: details}} =
               Schema.validate([name: :x, intervall: 5], @schema)

      assert message =~
               "unknown option :intervall (did you mean :interval?). Known options: :interval, :name,"

      assert details == %{
               "path" => [:intervall],
               "reason" => "unknown_option",
               "suggestion" => :interval
             }

      assert message(name: :x, zzz: 1) =~ ~r/^unknown option :zzz\. Known options/
    end

    test "the options must be a keyword list" do
      assert message(:nope) == "expected the options to be a keyword list, got: :nope"

      assert message([1, 2], @schema, of: "the widget's options") =~
               "expected the widget's options"
    end

    test "secrets are described, never shown" do
      assert message(name: :x, key: ~c"sk-123") ==
               "expected :key to be a non-empty string, got: a list of 6 elements"

      refute message([:x, "sk-secret"]) =~ "sk-secret"
    end

    test "wording: labels, context, templates and inherited defaults" do
      wording = [
        label: "widget option",
        context: " for MyWidget",
        invalid: "invalid value for %{label} %{key}: expected %{expected}, got: %{value}",
        defaults: [interval: 5]
      ]

      assert {:ok, resolved} = Schema.validate([name: :x], @schema, wording)
      assert resolved[:interval] == 5

      assert message([name: :x, interval: 0], @schema, wording) ==
               "invalid value for widget option :interval: expected a positive integer, got: 0"

      assert message([name: :x, intervl: 0], @schema, wording) =~
               "unknown widget option :intervl for MyWidget (did you mean :interval?)"

      assert message([name: :x, keep: -1], @schema, label: "widget option") ==
               "expected widget option :keep to be a non-negative integer (at most 50), got: -1"
    end

    test "validate!/3 raises ArgumentError with the same message" do
      assert Schema.validate!([name: :x], @schema)[:interval] == 30_000

      assert_raise ArgumentError, "expected :interval to be a positive integer, got: 0", fn ->
        Schema.validate!([name: :x, interval: 0], @schema)
      end
    end
  end

  describe "did_you_mean/2 and suggest/2" do
    test "only close candidates are suggested" do
      assert Schema.suggest(:watcher, [:watchers, :name]) == :watchers
      assert Schema.suggest("timout", ["timeout", "max_output"]) == "timeout"
      assert Schema.suggest(:x, []) == nil
      assert Schema.did_you_mean(:completely_different, [:interval]) == ""
    end
  end

  describe "docs/2" do
    test "renders docs, ranges, defaults and nested schemas as Markdown" do
      docs = Schema.docs(@schema)

      assert docs =~ "  * `:interval` - Milliseconds between snapshots. Default: `30000`.\n"
      assert docs =~ "  * `:name` - The name.\n"
      assert docs =~ "  * `:limit` - At most this many. From `1` to `100`. Default: `10`.\n"
      assert docs =~ "  * `:summarizer` - A module, or nil.\n"

      assert docs =~
               "  * `:gate` - Gate tuning.\n      * `:window` - Samples in a baseline. Default: `120`."

      assert docs =~ "      * `:z_threshold` - Deviations. Default: `4.0`."
    end

    test "doc_default replaces the default's text" do
      assert Schema.docs(provider: [type: :atom, doc: "The model.", doc_default: "from config"]) ==
               "  * `:provider` - The model. Default: from config."
    end

    test "defaults/1 lists the defaults" do
      assert Schema.defaults(@gate) == [window: 120, z_threshold: 4.0]
    end
  end
end
