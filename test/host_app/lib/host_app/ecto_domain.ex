defmodule HostApp.EctoDomain do
  @moduledoc "BeamLens's database domain for `HostApp.Repo`, as the README tells users to write it."
  use Beamlens.Domain.Ecto, repo: HostApp.Repo
end
