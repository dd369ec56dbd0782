defmodule Beamlens.LuaTest do
  use ExUnit.Case, async: true
  doctest Beamlens.Lua
  doctest Beamlens.LuaError
end
