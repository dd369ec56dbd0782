//! Atoms used across the NIF boundary. Atoms are only ever created from this
//! fixed list, never from text that comes from an LLM, a log line or Lua.

rustler::atoms! {
    ok,
    error,
    nil,
    busy,
    // error kinds (see `error.rs`)
    panic,
    bad_argument,
    shutdown,
    timeout,
    llm,
    // runtime status keys
    worker_threads,
    jobs_in_flight,
    job_capacity,
    jobs_started,
    jobs_busy_rejected,
    // Lua sandbox (see `sandbox::ErrorKind`, `nif_lua.rs`)
    syntax,
    runtime,
    instruction_limit,
    memory_limit,
    output_limit,
    callback_limit,
    callback_error,
    callback_timeout,
    no_return,
    cancelled,
    lua_callback,
    lua_helper_failed,
    expired,
    too_large,
    // the inline path (`lua_inline_start/3`)
    callback,
    yielded,
    abandon,
    run,
    go,
    max_instructions,
    max_memory,
    max_output,
    max_callbacks,
}
