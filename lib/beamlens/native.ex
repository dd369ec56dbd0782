defmodule Beamlens.Native do
  # NIF stubs, grouped like the Rust adapter files in native/beamlens_nif/src.
  # Public modules wrap these; nothing outside BeamLens should call them.
  @moduledoc false

  @on_load :load_nif
  @load_error_key {__MODULE__, :load_error}
  @native_defaults Beamlens.Runtime.native_defaults()

  # The library is loaded with settings from `config :beamlens, :native`
  # (`:worker_threads`, `:job_capacity`). A failed load is recorded instead of
  # aborting the module load, so that BeamLens can report it and stay out of
  # the host application's way; the stubs below then raise `:nif_not_loaded`.
  @doc false
  def load_nif do
    load_info =
      :beamlens
      |> Application.get_env(:native, [])
      |> Map.new()
      |> Map.take([:worker_threads, :job_capacity])
      |> then(&Map.merge(@native_defaults, &1))

    result =
      case :code.priv_dir(:beamlens) do
        {:error, reason} ->
          {:error, {:priv_dir, reason}}

        priv_dir ->
          path = :filename.join(priv_dir, ~c"native/libbeamlens_nif")
          :erlang.load_nif(path, load_info)
      end

    case result do
      :ok -> :persistent_term.erase(@load_error_key)
      {:error, {:reload, _}} -> :ok
      {:error, reason} -> :persistent_term.put(@load_error_key, reason)
    end

    :ok
  end

  @doc false
  def load_error, do: :persistent_term.get(@load_error_key, nil)

  # nif_compaction.rs
  def compaction_plan(_messages, _max_tokens, _keep_last, _fixed_tokens, _reported_tokens),
    do: err()

  def compaction_truncate(_messages, _keep_last), do: err()
  def compaction_estimate(_messages), do: err()

  # nif_gate.rs
  def gate_new(_config), do: err()
  def gate_observe(_gate, _samples, _now_ms), do: err()

  # nif_json.rs
  def json_encode(_term, _max_bytes), do: err()

  # nif_runtime.rs
  def runtime_status, do: err()

  # Test-only NIFs: the native library exports them only when built with
  # MIX_ENV=test (the `test-nifs` cargo feature, see
  # Mix.Tasks.Compile.BeamlensNif), and only then do these stubs exist.
  if Mix.env() == :test do
    def async_echo(_value, _delay_ms), do: err()
    def async_panic(_message), do: err()
    def sync_panic(_message), do: err()
    def dirty_checksum(_data), do: err()
    def lua_reference_eval(_code), do: err()
  end

  # nif_lua.rs
  def lua_eval(_code, _callback_names, _opts, _recipient), do: err()
  def lua_callback_reply(_reply, _result), do: err()
  def lua_callback_reply_large(_reply, _result), do: err()
  def lua_cancel(_run), do: err()
  def lua_set_helper(_run, _pid), do: err()
  def lua_status, do: err()
  def lua_inline_start(_code, _callback_names, _opts), do: err()
  def lua_inline_resume(_run, _answer), do: err()
  def lua_inline_status, do: err()

  # nif_redact.rs
  def redactor_new(_words, _defaults), do: err()
  def redact_text(_redactor, _text, _nodes), do: err()
  def redact_text_dirty(_redactor, _text, _nodes), do: err()

  # nif_llm.rs
  def llm_provider_new(_config), do: err()
  def llm_chat(_providers, _request, _caller), do: err()
  def llm_usage(_caller), do: err()
  def llm_set_budget(_budget), do: err()
  def llm_budget, do: err()

  # nif_correlation.rs
  def correlation_new(_options), do: err()
  def correlation_ingest(_engine, _alerts, _now_ms), do: err()
  def correlation_advance(_engine, _now_ms), do: err()
  def correlation_stats(_engine), do: err()
  def correlation_rules, do: err()

  defp err, do: :erlang.nif_error(:nif_not_loaded)
end
