defmodule HostApp.Order do
  @moduledoc "An order: the one table of the host app."
  use Ecto.Schema

  schema "orders" do
    field :customer, :string
    field :amount, :integer
    field :status, :string, default: "new"
  end
end
