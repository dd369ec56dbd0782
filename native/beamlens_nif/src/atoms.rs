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
}
