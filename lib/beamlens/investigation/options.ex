defmodule Beamlens.Investigation.Options do
  # The options of `Beamlens.investigate/2` (a `Beamlens.Schema`): their
  # validation and the docs rendered into its @doc.
  @moduledoc false

  alias Beamlens.Schema

  @schema [
    watchers: [
      type: {:list, :atom},
      default: nil,
      expected: "a list of watcher names (atoms)",
      doc: "The watchers to investigate, by name.",
      doc_default: "every running watcher"
    ],
    timeout: [
      type: :pos_integer,
      default: 60_000,
      doc: "Milliseconds the whole investigation may take."
    ],
    max_iterations: [type: :pos_integer, default: 6, doc: "Most model turns."],
    max_tokens: [type: :pos_integer, default: 30_000, doc: "Most model tokens (input + output)."],
    fire_alerts: [
      type: :boolean,
      default: false,
      doc:
        "Whether the alerts found are delivered through their watchers; with `false` they are only in the report."
    ],
    instance: [
      type: :atom,
      doc: "The BeamLens instance (the `:name` given to `Beamlens`).",
      doc_default: "`Beamlens`"
    ]
  ]

  @doc false
  @spec docs() :: String.t()
  def docs, do: Schema.docs(@schema)

  @doc false
  @spec validate(term()) :: {:ok, keyword()} | {:error, Beamlens.Error.t()}
  def validate(opts), do: Schema.validate(opts, @schema, context: " for Beamlens.investigate/2")
end
