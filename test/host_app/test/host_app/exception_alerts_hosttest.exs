defmodule HostApp.ExceptionAlertsTest do
  # Real crashes in the host app, captured by the real Tower and reported
  # to BeamLens's exception store (config :tower, reporters: [...]).
  use Beamlens.WatcherCase, async: false

  import HostApp.Case

  alias Beamlens.Domain.Exception.ExceptionStore
  alias HostApp.Orders

  @moduletag timeout: 120_000

  test "Tower's reports give an exception burst and a new exception group", %{
    instance: instance
  } do
    # Groups seen in the first 300 ms are the app's usual ones, not new.
    start_supervised!({ExceptionStore, new_group_grace_ms: 300})
    start_beamlens(instance, watchers: [:exception])
    await_ticks(instance, :exception, 10, 20_000)

    # Crashes arrive through Tower only: the store's own log capture is off.
    assert ExceptionStore.stats().sources == "tower"

    crashes =
      Task.async(fn ->
        for id <- 1..40 do
          {:ok, _} = Orders.charge_async(id)
          Process.sleep(10)
        end
      end)

    new = assert_alert(:exception, "new_exception_group", 20_000)
    burst = assert_alert(:exception, "exception_burst", 20_000)
    Task.await(crashes, 20_000)

    assert new.summary =~
             "new kind(s) of exception in the last 5 minutes (HostApp.Orders.PaymentError)"

    assert {"exception", "HostApp.Orders.PaymentError"} in new.entities

    assert burst.summary =~ "mostly HostApp.Orders.PaymentError"
    assert {"exception", "HostApp.Orders.PaymentError"} in burst.entities
    assert {"module", "HostApp.Orders"} in burst.entities
    assert burst.evidence.values["exception.count"].value > 1

    # Each crash is counted once, though Tower and OTP both report it. Counted
    # in its own group: on a loaded machine some other process of the app
    # may crash too (a timed-out call), which is not this test's business.
    payments = fn ->
      Enum.find(ExceptionStore.top_groups(50), &(&1.exception == "HostApp.Orders.PaymentError"))
    end

    wait_for(fn -> payments.() && payments.().count >= 40 end)
    assert payments.().count == 40, inspect(ExceptionStore.top_groups(50), pretty: true)
    assert ExceptionStore.stats().recorded >= 40

    # What the model reads: the group, its message and its stack.
    [group | _] = lua!("return exception.top_groups(1)", Beamlens.Domain.Exception)
    assert group["exception"] == "HostApp.Orders.PaymentError"
    assert group["message"] =~ "card declined for order"
    assert group["top_frame"] =~ "HostApp.Orders.charge!/1"
  end
end
