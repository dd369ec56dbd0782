defmodule Beamlens.OptionsTest do
  use ExUnit.Case, async: true

  alias Beamlens.Options

  test "built-in watchers expand with defaults and global settings" do
    opts =
      Options.validate!(
        watchers: [:beam, [name: :ets, interval: 1_000]],
        interval: 5_000,
        provider: :none
      )

    assert [beam, ets] = opts[:watchers]
    assert beam[:domain_module] == Beamlens.Domain.Beam
    assert beam[:interval] == 5_000
    assert beam[:compaction_max_tokens] == 50_000
    assert beam[:compaction_keep_last] == 5
    assert ets[:domain_module] == Beamlens.Domain.Ets
    assert ets[:interval] == 1_000
  end

  test "the PRODUCT.md tuned watcher form is accepted" do
    opts =
      Options.validate!(
        watchers: [
          :beam,
          [
            name: :ets,
            domain_module: Beamlens.Domain.Ets,
            compaction_max_tokens: 100_000,
            compaction_keep_last: 10
          ]
        ],
        provider: :none
      )

    ets = Enum.at(opts[:watchers], 1)
    assert ets[:compaction_max_tokens] == 100_000
    assert ets[:compaction_keep_last] == 10
  end

  test "unknown options name the key and suggest the closest" do
    message = assert_raise(ArgumentError, fn -> Options.validate!(watcher: [:beam]) end).message
    assert message =~ "unknown BeamLens option :watcher (did you mean :watchers?)"

    message =
      assert_raise(ArgumentError, fn ->
        Options.validate!(watchers: [[name: :ets, intervall: 5]])
      end).message

    assert message =~ "unknown watcher option :intervall (did you mean :interval?)"
  end

  test "wrong types name the key and the expected type" do
    message = assert_raise(ArgumentError, fn -> Options.validate!(interval: -5) end).message

    assert message ==
             "invalid value for BeamLens option :interval: expected a positive integer, got: -5"

    message = assert_raise(ArgumentError, fn -> Options.validate!(llm: :sometimes) end).message
    assert message =~ "expected one of :gated, :always, got: :sometimes"
  end

  test "an unknown watcher lists the built-in ones" do
    message = assert_raise(ArgumentError, fn -> Options.validate!(watchers: [:etss]) end).message
    assert message =~ "unknown watcher :etss. Built-in watchers are: :beam, :ets,"
    assert message =~ "(did you mean :ets?)"
  end

  test ":ecto without a domain module explains how to set it up" do
    message = assert_raise(ArgumentError, fn -> Options.validate!(watchers: [:ecto]) end).message
    assert message =~ "use Beamlens.Domain.Ecto, repo: MyApp.Repo"
  end

  test "a custom watcher needs a module implementing the behaviour" do
    message =
      assert_raise(ArgumentError, fn ->
        Options.validate!(watchers: [[name: :mine, domain_module: String]])
      end).message

    assert message =~ "must implement Beamlens.Domain"
  end

  test "watcher names must be unique" do
    message =
      assert_raise(ArgumentError, fn -> Options.validate!(watchers: [:beam, :beam]) end).message

    assert message =~ "duplicates: [:beam]"
  end

  test "the provider defaults to config, then :anthropic" do
    assert Options.validate!([])[:provider] == :anthropic
  end
end
