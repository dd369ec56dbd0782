[
  import_deps: [:ecto, :ecto_sql, :phoenix, :plug],
  locals_without_parens: [live_dashboard: 2],
  inputs: ["{mix,.formatter}.exs", "{config,lib,test,bench,priv}/**/*.{ex,exs}"]
]
