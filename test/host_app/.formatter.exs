[
  import_deps: [:ecto, :ecto_sql],
  inputs: ["{mix,.formatter}.exs", "{config,lib,test,bench,priv}/**/*.{ex,exs}"]
]
