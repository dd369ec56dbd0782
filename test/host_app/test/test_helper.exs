# The schema of the throwaway database (bin/pg), then the tests. They run
# one at a time: each injects faults into this VM and its database.
HostApp.Orders.migrate!()
ExUnit.start(capture_log: true)
