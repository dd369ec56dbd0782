# The BeamLens demo. For now it loads the NIF and shows the native runtime.
{:ok, status} = Beamlens.Runtime.status()
IO.puts("BeamLens #{Beamlens.version()}")
IO.puts("Native runtime: #{inspect(status)}")

{:ok, ref} = Beamlens.Native.async_echo(%{"hello" => "from tokio"}, 10)
IO.puts("Async job reply: #{inspect(Beamlens.Runtime.await(ref))}")
