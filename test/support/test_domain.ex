defmodule Beamlens.TestDomain do
  # A minimal domain for the pure state-machine tests (Watcher.Check,
  # Investigation.Loop): one callback, no metrics, a fixed snapshot.
  @moduledoc false
  use Beamlens.Domain

  @impl true
  def name, do: :tst

  @impl true
  def description, do: "A test domain"

  @impl true
  def snapshot, do: %{value: 1}

  @impl true
  def metrics(_snapshot), do: []

  @impl true
  def callbacks,
    do: [%{name: "top", args: "(n)", doc: "the top n", fun: fn [n] -> n end}]

  @impl true
  def summarize(finding, metric), do: "#{metric.label} at #{finding.value}"
end
