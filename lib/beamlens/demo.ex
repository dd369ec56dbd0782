defmodule Beamlens.Demo do
  # Helpers for bin/demo: which model to use, from the environment.
  @moduledoc false

  @doc false
  def provider_from_env do
    cond do
      System.get_env("ANTHROPIC_API_KEY") not in [nil, ""] -> :anthropic
      System.get_env("OPENAI_API_KEY") not in [nil, ""] -> :openai
      System.get_env("GOOGLE_API_KEY") not in [nil, ""] -> :gemini
      true -> :none
    end
  end

  @doc false
  def describe_provider(:none),
    do: "none: rules-only mode (set ANTHROPIC_API_KEY to let a model investigate)"

  def describe_provider(provider), do: "#{provider} (from the environment)"
end
