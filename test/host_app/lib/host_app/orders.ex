defmodule HostApp.Orders do
  @moduledoc """
  The host app's business code, and the ways it goes wrong that BeamLens
  should notice: a slow report, a checkout that needs a pool connection,
  SQL that fails, a payment that raises.
  """

  import Ecto.Query

  alias HostApp.{Order, Repo}

  defmodule PaymentError do
    @moduledoc "Raised when the (pretend) payment provider declines an order."
    defexception [:message]
  end

  @doc "Creates the schema (runs the migrations in priv/repo/migrations)."
  @spec migrate!() :: :ok
  def migrate! do
    path = Application.app_dir(:host_app, "priv/repo/migrations")
    Ecto.Migrator.run(Repo, path, :up, all: true, log: false)
    :ok
  end

  @doc "Places an order."
  @spec place!(String.t(), integer()) :: Order.t()
  def place!(customer, amount), do: Repo.insert!(%Order{customer: customer, amount: amount})

  @doc """
  A report that takes `seconds` on the database (`pg_sleep`) for a
  customer's orders: the slow query.
  """
  @spec slow_report(String.t(), float()) :: [term()]
  def slow_report(customer, seconds) do
    # Literals, as application code often has them: normalised away by BeamLens.
    Repo.all(
      from(o in Order,
        where: o.customer == ^customer and o.status != "cancelled",
        select: fragment("pg_sleep(?::float)", ^seconds),
        limit: 1
      )
    )
  end

  @doc "A quick lookup: the healthy load."
  @spec find(integer()) :: Order.t() | nil
  def find(id), do: Repo.get(Order, id)

  @doc "A query on a table that a migration forgot: fails on the database."
  @spec broken_lookup(integer()) :: {:ok, term()} | {:error, Exception.t()}
  def broken_lookup(id), do: Repo.query("SELECT * FROM order_archive WHERE id = $1", [id])

  @doc """
  Charges an order in a task of its own; the payment provider declines it
  and the task crashes (Tower reports the crash).
  """
  @spec charge_async(integer()) :: {:ok, pid()}
  def charge_async(order_id) do
    Task.Supervisor.start_child(HostApp.Tasks, fn -> charge!(order_id) end)
  end

  @doc "Charges an order: always declined."
  @spec charge!(integer()) :: no_return()
  def charge!(order_id) do
    raise PaymentError, message: "card declined for order #{order_id}"
  end
end
