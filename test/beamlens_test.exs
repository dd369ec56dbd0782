defmodule BeamlensTest do
  use ExUnit.Case, async: true
  doctest Beamlens
end
