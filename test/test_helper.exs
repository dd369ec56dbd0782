# With the real telemetry library on the code path (ERL_LIBS), start it; the
# offline stand-in in test/support needs no application.
telemetry =
  case Application.ensure_all_started(:telemetry) do
    {:ok, _} -> "telemetry #{Application.spec(:telemetry, :vsn)}"
    {:error, _} -> "the test/support :telemetry stand-in"
  end

IO.puts("Running against #{telemetry}")

ExUnit.start(capture_log: true, exclude: [:real_model])
