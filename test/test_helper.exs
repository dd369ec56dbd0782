# With the real telemetry library on the code path (ERL_LIBS), start it; the
# offline stand-in in test/support needs no application.
telemetry =
  case Application.ensure_all_started(:telemetry) do
    {:ok, _} -> "telemetry #{Application.spec(:telemetry, :vsn)}"
    {:error, _} -> "the test/support :telemetry stand-in"
  end

IO.puts("Running against #{telemetry}")

# Cluster tests start peer nodes; they need this VM to be a distributed node
# (loopback only). Where distribution cannot start they are skipped.
exclude =
  if Beamlens.CoordinatorCase.ensure_distributed() do
    [:real_model]
  else
    IO.puts("Distribution unavailable: skipping tests tagged :distributed")
    [:real_model, :distributed]
  end

# The :real_model group needs a model server: BEAMLENS_REAL_MODEL_URL, set
# by `bin/test --real-model`.
exclude =
  if System.get_env("BEAMLENS_REAL_MODEL_URL") in [nil, ""],
    do: exclude,
    else: exclude -- [:real_model]

ExUnit.start(capture_log: true, exclude: exclude)
