[
  # test/host_app is a Mix project of its own, with its own .formatter.exs.
  inputs: [
    "{mix,.formatter}.exs",
    "{config,lib,bench}/**/*.{ex,exs}",
    "test/*.exs",
    "test/{beamlens,mix,support}/**/*.{ex,exs}"
  ]
]
