# The schema of the throwaway database (bin/pg), then the tests. They run
# one at a time: each injects faults into this VM and its database.
HostApp.Orders.migrate!()

# The browser test needs Chromium and Playwright (test/browser/setup installs
# the latter into a local venv). Where they cannot be had it is excluded,
# and says so.
browser =
  case System.cmd(Path.expand("browser/setup", __DIR__), [], stderr_to_stdout: true) do
    {out, 0} ->
      [chromium, python] = out |> String.split("\n", trim: true) |> Enum.take(-2)
      Application.put_env(:host_app, :browser, chromium: chromium, python: python)
      []

    {out, _} ->
      IO.puts("SKIPPED: the dashboard's browser test: #{String.trim(out)}")
      [:browser]
  end

ExUnit.start(capture_log: true, exclude: browser)
