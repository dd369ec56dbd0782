defmodule HostApp.Repo.Migrations.CreateOrders do
  use Ecto.Migration

  def change do
    create table(:orders) do
      add :customer, :string, null: false
      add :amount, :integer, null: false
      add :status, :string, null: false, default: "new"
    end
  end
end
