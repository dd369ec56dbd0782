//! The Lua sandbox: runs one untrusted, read-only investigation script with
//! hard limits, and lets it call named host callbacks.
//!
//! # Why Luau
//!
//! The interpreter is Luau (vendored and compiled by `mlua-sys`), not Lua
//! 5.4, because:
//!
//! * Luau's interrupt is called at every loop iteration and function call
//!   *and at every step of the pattern matcher* (`lstrlib.cpp` calls it from
//!   `match`). With Lua 5.4 an instruction hook never fires inside
//!   `string.find`, so a backtracking pattern could hold a thread for
//!   minutes. Here the same budget that stops `while true do end` stops it.
//! * Its sandbox mode makes the globals, the library tables and the string
//!   metatable read-only and gives each script a private global table, so no
//!   metatable trick reaches shared state.
//! * It has no bytecode dumping (`string.dump`), no `__gc` on tables, no
//!   `io`, `package` or `debug.sethook`; chunks are always compiled from
//!   text, so no hand-made bytecode is ever loaded.
//!
//! # A run
//!
//! [`run`] takes a sealed state from a small pool (or builds one:
//! [`stdlib`], a captured and bounded `print`, the callback dispatcher),
//! gives it a fresh global table holding the run's callbacks, compiles the
//! script and calls it through a trampoline that cuts error messages.
//! Limits ([`limits`]) are enforced by the interrupt (instructions, wall
//! time through a watchdog flag, cancellation), the allocator (memory),
//! `print` and the result conversion ([`value`]) (output, measured as
//! escaped JSON), and the callback wrapper (callback count, time, total
//! argument size). At the end the run's global table is unhooked, so
//! nothing it stored survives; a state whose run broke a limit is dropped
//! (see `Prepared` for what is reset between runs).
//!
//! The sandbox is plain Rust: the [`Host`] trait is how it reaches the
//! callbacks, and `nif_lua.rs` implements it by messaging an Elixir process.

mod inline;
mod interrupt;
pub mod limits;
#[cfg(feature = "reference-interpreter")]
pub mod reference;
pub mod stdlib;
pub mod value;
mod watchdog;

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mlua::chunk::ChunkMode;
use mlua::{Function, Lua, MultiValue, Table, Value as LuaValue, VmState};
use serde_json::Value;

pub use inline::{in_flight as inline_in_flight, InlineRun, Input, Step, MAX_INLINE_RUNS};
pub use limits::{Budget, Limits};
use value::ConvertError;

/// Largest script accepted, in bytes.
pub const MAX_CODE_SIZE: usize = 1024 * 1024;

/// Every way a run can fail. The names are the atoms the Elixir side sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorKind {
    Syntax = 1,
    Runtime,
    Timeout,
    InstructionLimit,
    MemoryLimit,
    OutputLimit,
    CallbackLimit,
    CallbackError,
    CallbackTimeout,
    NoReturn,
    Cancelled,
    /// Internal, never reported: a run on the inline path met something it
    /// cannot bound in time there, and must be run again on a thread.
    Abandoned,
}

impl ErrorKind {
    const ALL: [ErrorKind; 12] = [
        ErrorKind::Syntax,
        ErrorKind::Runtime,
        ErrorKind::Timeout,
        ErrorKind::InstructionLimit,
        ErrorKind::MemoryLimit,
        ErrorKind::OutputLimit,
        ErrorKind::CallbackLimit,
        ErrorKind::CallbackError,
        ErrorKind::CallbackTimeout,
        ErrorKind::NoReturn,
        ErrorKind::Cancelled,
        ErrorKind::Abandoned,
    ];

    pub(crate) fn from_code(code: u8) -> Option<ErrorKind> {
        Self::ALL.into_iter().find(|kind| *kind as u8 == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Syntax => "syntax",
            ErrorKind::Runtime => "runtime",
            ErrorKind::Timeout => "timeout",
            ErrorKind::InstructionLimit => "instruction_limit",
            ErrorKind::MemoryLimit => "memory_limit",
            ErrorKind::OutputLimit => "output_limit",
            ErrorKind::CallbackLimit => "callback_limit",
            ErrorKind::CallbackError => "callback_error",
            ErrorKind::CallbackTimeout => "callback_timeout",
            ErrorKind::NoReturn => "no_return",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Abandoned => "abandoned",
        }
    }
}

/// What a run used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Interrupt checks passed (see [`Limits::max_instructions`]).
    pub instructions: u64,
    /// Callback calls made.
    pub callbacks: u32,
    /// Bytes held by the Lua state when the run ended.
    pub memory: usize,
    /// Wall time of the run.
    pub duration: Duration,
}

/// A successful run.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The returned value; several returned values become an array.
    pub value: Value,
    /// Everything the script printed.
    pub output: String,
    pub stats: Stats,
}

/// A failed run, with a message written for the model that wrote the script.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub kind: ErrorKind,
    /// What went wrong and, for limits, what to do about it. No line prefix.
    pub message: String,
    /// The script line the error points at, when known.
    pub line: Option<u32>,
    /// What the script printed before it failed.
    pub output: String,
    pub stats: Stats,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Why a callback did not return a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// The callback raised, or its answer could not be converted.
    Failed(String),
    /// No answer within the time given.
    TimedOut,
    /// Nobody is serving callbacks any more (the run was abandoned).
    Gone,
}

/// Where callbacks are executed.
pub trait Host: Send {
    /// Calls the callback `name` with `args` and waits at most `timeout`
    /// for its answer.
    fn call(&mut self, name: &str, args: Vec<Value>, timeout: Duration)
        -> Result<Value, HostError>;
}

/// A callback failure, raised in the script as a plain error string. The
/// last one is remembered so that, if it ends the run, the run reports its
/// kind (`callback_error` or `callback_timeout`).
#[derive(Debug, Clone)]
struct CallbackFailure {
    kind: ErrorKind,
    message: String,
}

/// A broken limit travelling through Lua as an error value.
#[derive(Debug, Clone)]
struct LimitHit(ErrorKind);

impl fmt::Display for LimitHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the script broke its {} limit", self.0.name())
    }
}

impl std::error::Error for LimitHit {}

/// State shared by the functions installed in one run's Lua state.
struct Shared {
    budget: Budget,
    output: Mutex<String>,
    host: Mutex<Box<dyn Host>>,
    /// Line at which the first limit was broken, when known.
    limit_line: Mutex<Option<u32>>,
    /// The last callback failure raised in the script.
    callback_failure: Mutex<Option<CallbackFailure>>,
    /// Set when the run is on the inline path (see [`inline`]).
    inline: Option<inline::Ctl>,
}

/// Checks callback names: dotted Lua identifiers (`"beam.top_processes"`,
/// at most 4 parts) that neither shadow a standard global nor clash with
/// each other (`"a"` and `"a.b"`).
pub fn check_callback_names(names: &[String]) -> Result<(), String> {
    const RESERVED: &[&str] = &[
        "_G",
        "_VERSION",
        "assert",
        "bit32",
        "buffer",
        "collectgarbage",
        "coroutine",
        "error",
        "gcinfo",
        "getmetatable",
        "ipairs",
        "math",
        "newproxy",
        "next",
        "os",
        "pairs",
        "pcall",
        "print",
        "rawequal",
        "rawget",
        "rawlen",
        "rawset",
        "select",
        "setmetatable",
        "string",
        "table",
        "tonumber",
        "tostring",
        "type",
        "typeof",
        "unpack",
        "utf8",
        "vector",
        "xpcall",
    ];
    const KEYWORDS: &[&str] = &[
        "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "if", "in",
        "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
        "continue",
    ];
    let is_ident = |part: &str| {
        let mut chars = part.chars();
        matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
            && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
            && part.len() <= 64
            && !KEYWORDS.contains(&part)
    };
    for name in names {
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() > 4 || !parts.iter().all(|p| is_ident(p)) {
            return Err(format!(
                "{name:?} is not a dotted Lua name such as \"beam.top_processes\""
            ));
        }
        if RESERVED.contains(&parts[0]) {
            return Err(format!(
                "{name:?} would shadow the Lua standard global `{}`",
                parts[0]
            ));
        }
        for other in names {
            if other.len() > name.len()
                && other.starts_with(name.as_str())
                && other.as_bytes()[name.len()] == b'.'
            {
                return Err(format!(
                    "{name:?} cannot be both a callback and the namespace of {other:?}"
                ));
            }
        }
    }
    Ok(())
}

/// Runs `code` in a sandbox. `cancel` ends the run early when set (read by
/// the interrupt every few steps, and before each callback call).
///
/// The sealed state comes from a small pool (see [`Prepared`]): every run
/// gets its own global table, its own callbacks, budget and memory limit,
/// and a state whose run broke a limit is dropped instead of reused.
pub fn run(
    code: &[u8],
    callbacks: &[String],
    limits: Limits,
    host: Box<dyn Host>,
    cancel: Arc<AtomicBool>,
) -> Result<Outcome, Failure> {
    let shared = Arc::new(Shared {
        budget: Budget::new(limits, cancel),
        output: Mutex::new(String::new()),
        host: Mutex::new(host),
        limit_line: Mutex::new(None),
        callback_failure: Mutex::new(None),
        inline: None,
    });

    let _clear = ClearInterruptOnDrop;
    let prepared = match checkout().and_then(|p| begin(&p, &shared, callbacks, false).map(|_| p)) {
        Ok(prepared) => prepared,
        Err(error) => return Err(failure(&shared, None, classify(&shared, &error))),
    };
    let lua = &prepared.lua;

    let result = lua
        .load(code)
        .set_name("=script")
        .set_mode(ChunkMode::Text)
        .into_function()
        .and_then(|function| prepared.trampoline.call::<MultiValue>(function));

    let outcome = match result {
        Ok(values) => finish(&shared, values),
        Err(error) => Err(classify(&shared, &error)),
    };
    let result = outcome
        .map(|value| Outcome {
            value,
            output: take_output(&shared),
            stats: stats(&shared, Some(lua)),
        })
        .map_err(|error| failure(&shared, Some(lua), error));
    interrupt::clear(Some(lua));
    lua.remove_interrupt();

    if reusable(&shared, &result) && end(&prepared).is_ok() {
        checkin(prepared);
    }
    result
}

/// Whether the state of a run that ended so may serve another run.
fn reusable(shared: &Shared, result: &Result<Outcome, Failure>) -> bool {
    shared.budget.tripped().is_none()
        && match result {
            Ok(_) => true,
            Err(failure) => matches!(
                failure.kind,
                ErrorKind::Syntax
                    | ErrorKind::Runtime
                    | ErrorKind::NoReturn
                    | ErrorKind::CallbackError
                    | ErrorKind::CallbackTimeout
            ),
        }
}

/// Forgets the run's stop flags however the run ends (panics included).
struct ClearInterruptOnDrop;

impl Drop for ClearInterruptOnDrop {
    fn drop(&mut self) {
        interrupt::clear(None);
    }
}

/// Longest error message kept, in bytes. Longer ones (`error(big)`, a
/// callback's exception) are cut before they leave the Lua state.
pub const MAX_MESSAGE: usize = 2048;

/// Cuts `message` to at most `max` bytes (on a character boundary) and
/// says so.
pub fn truncate(message: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if message.len() <= max {
        return message.into();
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... (message truncated)", &message[..end]).into()
}

/// Runs the script's function under `xpcall` with a handler that cuts
/// string errors to [`MAX_MESSAGE`] bytes inside Lua, before mlua copies
/// them out (three bytes per invalid byte) and adds a traceback. Other
/// error values (the limits' and callbacks' errors) pass unchanged.
///
/// An error raised by a library function called from a Lua library
/// wrapper (`stdlib.rs`) points at the wrapper; `relocate` points it at
/// the script line that called the wrapper.
const TRAMPOLINE: &str = r#"
local cap, sub, type, xpcall, error, relocate, wrap = ...
local function handler(e)
    if type(e) == "string" then
        if sub(e, 1, #wrap) == wrap then
            e = relocate(e)
        end
        if #e > cap then
            return sub(e, 1, cap) .. "... (message truncated)"
        end
    end
    return e
end
local function finish(ok, ...)
    if ok then
        return ...
    end
    error((...), 0)
end
return function(f)
    return finish(xpcall(f, handler))
end
"#;

/// The kind, message and line of an error, before output and stats are
/// attached.
struct Error {
    kind: ErrorKind,
    message: String,
    line: Option<u32>,
}

fn failure(shared: &Shared, lua: Option<&Lua>, error: Error) -> Failure {
    Failure {
        kind: error.kind,
        message: error.message,
        line: error.line,
        output: take_output(shared),
        stats: stats(shared, lua),
    }
}

fn take_output(shared: &Shared) -> String {
    std::mem::take(&mut *lock(&shared.output))
}

fn stats(shared: &Shared, lua: Option<&Lua>) -> Stats {
    Stats {
        instructions: (shared.budget.steps() + interrupt::uncounted_steps())
            .min(shared.budget.limits.max_instructions),
        callbacks: shared.budget.callbacks(),
        memory: lua.map_or(0, Lua::used_memory),
        duration: shared.budget.started.elapsed(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A sealed Lua state and the functions every run uses, kept between runs.
///
/// What a run can change in it and how the next run is protected:
///
/// * globals, library tables, the string metatable: read-only (Luau's
///   sandbox), and each run gets a fresh global table (`begin`) whose reads
///   fall through to the shared one; the state's globals index is set back
///   to an empty table at the end of the run (`end`), so nothing the run
///   stored stays reachable;
/// * `math.random`'s generator: reseeded at the start of every run;
/// * garbage: collected before a run when more than [`GARBAGE_SLACK`]
///   bytes above the fresh state are in use, and the memory limit is set
///   from what is in use when the run starts;
/// * a run that broke a limit (or panicked) drops the state.
struct Prepared {
    lua: Lua,
    trampoline: Function,
    /// Makes the Lua function for one callback name ([`CALLBACK_WRAPPER`]).
    make_callback: Function,
    /// Read-only metatable of every run's global table.
    env_meta: Table,
    /// The (empty, read-only) global table between runs.
    idle_env: Table,
    randomseed: Function,
    /// Resets the scripts' `pcall` nesting count (`stdlib::PCALL`).
    reset_pcall: Function,
    /// Memory in use right after the state was prepared.
    base_memory: usize,
}

/// Sealed states kept for reuse; at most [`POOL_SIZE`].
static POOL: Mutex<Vec<Prepared>> = Mutex::new(Vec::new());

/// States kept for reuse (one per concurrent run is enough).
pub const POOL_SIZE: usize = 8;

/// Garbage tolerated from earlier runs before a full collection.
const GARBAGE_SLACK: usize = 256 * 1024;

/// The run using a state, as reached by `print` and the callbacks.
struct Current(Arc<Shared>);

fn current(lua: &Lua) -> mlua::Result<Arc<Shared>> {
    lua.app_data_ref::<Current>()
        .map(|current| Arc::clone(&current.0))
        .ok_or_else(|| mlua::Error::runtime("no run is in progress"))
}

fn checkout() -> mlua::Result<Prepared> {
    let pooled = lock(&POOL).pop();
    match pooled {
        Some(prepared) => Ok(prepared),
        None => build(),
    }
}

fn checkin(prepared: Prepared) {
    let mut pool = lock(&POOL);
    if pool.len() < POOL_SIZE {
        pool.push(prepared);
    }
}

/// Builds and seals a state.
fn build() -> mlua::Result<Prepared> {
    let lua = stdlib::new_state()?;
    let globals = lua.globals();
    let string: Table = globals.raw_get("string")?;
    let math: Table = globals.raw_get("math")?;
    let trampoline: Function = lua
        .load(TRAMPOLINE)
        .set_name("=run")
        .set_mode(ChunkMode::Text)
        .call((
            MAX_MESSAGE,
            string.raw_get::<Function>("sub")?,
            globals.raw_get::<Function>("type")?,
            lua.named_registry_value::<Function>(stdlib::NATIVE_XPCALL)?,
            globals.raw_get::<Function>("error")?,
            lua.create_function(relocate)?,
            format!("{}:", &stdlib::WRAPPERS_CHUNK[1..]),
        ))?;

    let tostring: Function = globals.raw_get("tostring")?;
    let print = lua.create_function(move |lua, args: MultiValue| {
        let shared = current(lua)?;
        // The line is checked against what is left of `max_output` before
        // each piece is converted or copied: a huge argument (or thousands
        // of them) is refused before any memory is spent on it.
        let max = shared.budget.limits.max_output;
        let used = lock(&shared.output).len();
        let over = || {
            let kind = shared.budget.trip(ErrorKind::OutputLimit);
            Err(mlua::Error::external(LimitHit(kind)))
        };
        let mut line = String::new();
        for (i, arg) in args.iter().enumerate() {
            if i > 0 {
                line.push('\t');
            }
            let text: mlua::LuaString = tostring.call(arg)?;
            let bytes = text.as_bytes();
            // Replacing invalid UTF-8 never shrinks the text.
            if used + line.len() + bytes.len() + 1 > max {
                return over();
            }
            line.push_str(&String::from_utf8_lossy(&bytes));
        }
        line.push('\n');
        let mut output = lock(&shared.output);
        if output.len() + line.len() > max {
            drop(output);
            return over();
        }
        output.push_str(&line);
        Ok(())
    })?;
    globals.raw_set("print", print)?;

    let raw = lua.create_function(|lua, mut args: MultiValue| {
        let shared = current(lua)?;
        let name = match args.pop_front() {
            Some(LuaValue::String(name)) => name.to_str()?.to_string(),
            _ => {
                return Err(mlua::Error::runtime(
                    "a callback was called without its name",
                ))
            }
        };
        match call_callback(lua, &shared, &name, args)? {
            Called::Value(value) => Ok((LuaValue::Boolean(true), value)),
            Called::Failed(failure) => {
                let message = failure.message.clone();
                *lock(&shared.callback_failure) = Some(failure);
                Ok((
                    LuaValue::Boolean(false),
                    LuaValue::String(lua.create_string(message)?),
                ))
            }
        }
    })?;
    let make_callback: Function = lua
        .load(CALLBACK_WRAPPER)
        .set_name("=callback")
        .set_mode(ChunkMode::Text)
        .call((
            raw,
            globals.raw_get::<Function>("error")?,
            // SAFETY: a C function that only reads its state (see there).
            unsafe { lua.create_c_function(interrupt::yield_call)? },
            inline::pending_marker(),
        ))?;

    let env_meta = lua.create_table()?;
    env_meta.raw_set("__index", &globals)?;
    env_meta.raw_set("__metatable", false)?;
    let randomseed: Function = math.raw_get("randomseed")?;
    let reset_pcall: Function = lua.named_registry_value(stdlib::PCALL_RESET)?;

    stdlib::seal(&lua)?;
    env_meta.set_readonly(true);
    let idle_env = lua.create_table()?;
    idle_env.set_metatable(Some(env_meta.clone()))?;
    idle_env.set_readonly(true);
    lua.gc_collect()?;
    let base_memory = lua.used_memory();
    Ok(Prepared {
        lua,
        trampoline,
        make_callback,
        env_meta,
        idle_env,
        randomseed,
        reset_pcall,
        base_memory,
    })
}

/// Readies a state for one run: its own global table with the run's
/// callbacks, memory limit, random seed and interrupt. `inline`: the run
/// is on the inline path (its callbacks yield the run's Luau thread).
fn begin(
    prepared: &Prepared,
    shared: &Arc<Shared>,
    callbacks: &[String],
    inline: bool,
) -> mlua::Result<interrupt::Handle> {
    check_callback_names(callbacks).map_err(mlua::Error::runtime)?;
    let lua = &prepared.lua;
    lua.set_app_data(Current(Arc::clone(shared)));

    lua.set_memory_limit(0)?;
    if lua.used_memory() > prepared.base_memory + GARBAGE_SLACK {
        lua.gc_collect()?;
    }

    let env = lua.create_table()?;
    env.set_metatable(Some(prepared.env_meta.clone()))?;
    for (index, name) in callbacks.iter().enumerate() {
        install_callback(lua, &env, prepared, (name, index), inline)?;
    }
    freeze_namespaces(&env, 0)?;
    set_globals(lua, env)?;

    static SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seed = SEED.fetch_add(0x9e37_79b9, std::sync::atomic::Ordering::Relaxed)
        ^ shared.budget.started.elapsed().as_nanos() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    prepared.randomseed.call::<()>(seed as f64)?;
    prepared.reset_pcall.call::<()>(())?;

    let used = lua.used_memory();
    lua.set_memory_limit(used.saturating_add(shared.budget.limits.max_memory))?;

    let interrupt_shared = Arc::clone(shared);
    let flags = interrupt::StopFlags(shared.budget.stop_flags());
    interrupt::install(lua, flags, move |lua, steps, may_yield| {
        let budget = &interrupt_shared.budget;
        let verdict = budget
            .tick(steps)
            .and_then(|()| match &interrupt_shared.inline {
                Some(ctl) => ctl.slice_verdict(budget, may_yield),
                None => Ok(VmState::Continue),
            });
        match verdict {
            Ok(state) => Ok(state),
            Err(kind) => {
                let mut line = lock(&interrupt_shared.limit_line);
                if line.is_none() {
                    *line = current_line(lua, 0);
                }
                Err(mlua::Error::external(LimitHit(kind)))
            }
        }
    })
}

/// After a run: nothing of it stays reachable from the state.
fn end(prepared: &Prepared) -> mlua::Result<()> {
    let lua = &prepared.lua;
    lua.remove_app_data::<Current>();
    set_globals(lua, prepared.idle_env.clone())?;
    lua.set_memory_limit(0)?;
    Ok(())
}

/// Makes `env` the state's global table: chunks loaded from now on use it,
/// and Luau resolves their imports (`math.floor`, `beam.top`) against it
/// (`safeenv`, as Luau's own sandbox does for each thread).
fn set_globals(lua: &Lua, env: Table) -> mlua::Result<()> {
    // SAFETY: `env` is pushed by `exec_raw`; it is marked safe and moved
    // into the globals slot of the state, which leaves the stack as found.
    unsafe {
        lua.exec_raw::<()>(env, |state| {
            mlua::ffi::lua_setsafeenv(state, -1, 1);
            mlua::ffi::lua_replace(state, mlua::ffi::LUA_GLOBALSINDEX);
        })
    }
}

/// Turns `"wrap:12: message"` (an error raised under a library wrapper)
/// into `"script:N: message"`, N being the innermost script line on the
/// stack (the call of the wrapper).
fn relocate(lua: &Lua, message: mlua::LuaString) -> mlua::Result<mlua::LuaString> {
    let bytes = message.as_bytes();
    let rest = bytes
        .splitn(3, |b| *b == b':')
        .nth(2)
        .map_or(&bytes[..], |rest| rest.strip_prefix(b" ").unwrap_or(rest));
    let line = (0..64).find_map(|level| current_line(lua, level));
    let mut located = match line {
        Some(line) => format!("script:{line}: ").into_bytes(),
        None => Vec::new(),
    };
    located.extend_from_slice(rest);
    lua.create_string(located)
}

/// The script line running at stack `level`, if that frame is the
/// script's (not the trampoline's or a library wrapper's).
fn current_line(lua: &Lua, level: usize) -> Option<u32> {
    lua.inspect_stack(level, |debug| {
        let in_script = debug.source().source.as_deref() == Some("=script");
        debug.current_line().filter(|_| in_script)
    })
    .flatten()
    .and_then(|line| u32::try_from(line).ok())
    .filter(|line| *line > 0)
}

/// Makes the Lua function for a callback name: it calls the raw
/// dispatcher with the name and raises a failure as a plain Lua error
/// string pointing at the script line that made the call (`error(m, 2)`),
/// without the Rust-side traceback a raised Rust error would carry.
///
/// On the inline path the wrapper yields the run's Luau thread straight
/// away with `pending, index, ...` when it can (`yield_call`: it runs in
/// that thread, not inside a metamethod, a `table.sort` comparator or a
/// coroutine of the script's own): the process stepping the run runs the
/// callback and resumes the run with `ok, value`, and no Rust function
/// runs in between. When the run cannot take the request as it
/// is (its arguments are too large, a limit is broken) it resumes the
/// wrapper with `pending`, and the wrapper calls the dispatcher, which
/// reports the failure as on the threaded path. Where the wrapper cannot
/// yield (`yield_call` returns nothing), the dispatcher abandons the
/// inline run.
const CALLBACK_WRAPPER: &str = r#"
local raw, error, yield_call, pending = ...
return function(name, index, inline)
    return function(...)
        local ok, value
        if inline then
            ok, value = yield_call(pending, index, ...)
        end
        if ok == nil or ok == pending then
            ok, value = raw(name, ...)
        end
        if ok then
            return value
        end
        error(value, 2)
    end
end
"#;

/// Installs `name` ("a.b.c", the run's callback number `index`) in the
/// run's global table `env` as a Lua function that forwards to the host.
fn install_callback(
    lua: &Lua,
    env: &Table,
    prepared: &Prepared,
    (name, index): (&str, usize),
    inline: bool,
) -> mlua::Result<()> {
    let parts: Vec<&str> = name.split('.').collect();
    let (last, namespaces) = parts.split_last().expect("split yields at least one part");
    let mut table = env.clone();
    for part in namespaces {
        table = match table.raw_get::<LuaValue>(*part)? {
            LuaValue::Table(existing) => existing,
            _ => {
                let created = lua.create_table()?;
                table.raw_set(*part, &created)?;
                created
            }
        };
    }
    let wrapped: Function = prepared.make_callback.call((name, index, inline))?;
    table.raw_set(*last, wrapped)
}

/// Makes the namespace tables under `table` read-only, so that a script
/// cannot replace a callback (`beam.top = ...`).
fn freeze_namespaces(table: &Table, depth: usize) -> mlua::Result<()> {
    for pair in table.pairs::<LuaValue, LuaValue>() {
        if let (_, LuaValue::Table(namespace)) = pair? {
            if depth < 4 {
                freeze_namespaces(&namespace, depth + 1)?;
            }
            namespace.set_readonly(true);
        }
    }
    Ok(())
}

/// What a callback call gave.
enum Called {
    Value(LuaValue),
    /// A failure the script may catch.
    Failed(CallbackFailure),
}

/// Calls a callback. `Err` is a broken limit (raised, sticky).
fn call_callback(lua: &Lua, shared: &Shared, name: &str, args: MultiValue) -> mlua::Result<Called> {
    let budget = &shared.budget;
    let limit = |kind: ErrorKind| Err(mlua::Error::external(LimitHit(kind)));
    if let Err(kind) = budget.charge_callback() {
        let mut line = lock(&shared.limit_line);
        if line.is_none() {
            // Level 0 is this function, 1 the wrapper, 2 the script.
            *line = current_line(lua, 2);
        }
        return limit(kind);
    }
    let fail =
        |kind: ErrorKind, message: String| Ok(Called::Failed(CallbackFailure { kind, message }));

    // All arguments together are bounded by `max_output`, as their JSON.
    let json_args = match value::to_json_array(args.iter(), budget.limits.max_output) {
        Ok(Value::Array(items)) => items,
        Ok(other) => vec![other],
        Err(error) => {
            let reason = match error {
                ConvertError::TooLarge(max) => format!("are larger than {max} bytes in total"),
                ConvertError::TooDeep => {
                    format!("are nested deeper than {} levels", value::MAX_DEPTH)
                }
                ConvertError::Lua(message) => format!("could not be read: {message}"),
            };
            return fail(
                ErrorKind::CallbackError,
                format!("the arguments of callback {name} {reason}"),
            );
        }
    };

    // On the inline path a call that gets here could not yield (see
    // `CALLBACK_WRAPPER`): the run moves to a thread.
    if shared.inline.is_some() {
        return limit(budget.trip(ErrorKind::Abandoned));
    }
    let wait = budget.callback_wait();
    let answer = lock(&shared.host).call(name, json_args, wait);
    answer_callback(lua, shared, name, wait, answer)
}

/// Turns a callback's answer into what the script sees.
fn answer_callback(
    lua: &Lua,
    shared: &Shared,
    name: &str,
    wait: Duration,
    answer: Result<Value, HostError>,
) -> mlua::Result<Called> {
    let budget = &shared.budget;
    let limit = |kind: ErrorKind| Err(mlua::Error::external(LimitHit(kind)));
    let fail =
        |kind: ErrorKind, message: String| Ok(Called::Failed(CallbackFailure { kind, message }));
    match answer {
        Ok(json) => Ok(Called::Value(value::to_lua(lua, &json)?)),
        Err(HostError::Failed(reason)) => fail(
            ErrorKind::CallbackError,
            format!(
                "callback {name} failed: {}",
                truncate(&reason, MAX_MESSAGE / 2)
            ),
        ),
        Err(HostError::TimedOut) if budget.past_deadline() => {
            limit(budget.trip(ErrorKind::Timeout))
        }
        Err(HostError::TimedOut) => fail(
            ErrorKind::CallbackTimeout,
            format!(
                "callback {name} did not answer within {} ms",
                wait.as_millis()
            ),
        ),
        Err(HostError::Gone) => limit(budget.trip(ErrorKind::Cancelled)),
    }
}

/// Turns the returned values into the result.
fn finish(shared: &Shared, values: MultiValue) -> Result<Value, Error> {
    if let Some(kind) = shared.budget.tripped() {
        return Err(limit_error(shared, kind));
    }
    let max = shared.budget.limits.max_output;
    let converted = match values.len() {
        0 => {
            return Err(Error {
                kind: ErrorKind::NoReturn,
                message: "the script returned no value; end it with a `return` statement, \
                          for example `return result` (printed output is not the result)"
                    .into(),
                line: None,
            });
        }
        1 => value::to_json(&values[0], max),
        // Several values become one array.
        _ => value::to_json_array(values.iter(), max),
    };
    converted.map_err(|error| match error {
        ConvertError::TooLarge(max) => Error {
            kind: ErrorKind::OutputLimit,
            message: format!(
                "the result is larger than {max} bytes (output_limit); return a summary \
                 or only the top entries instead"
            ),
            line: None,
        },
        ConvertError::TooDeep => Error {
            kind: ErrorKind::OutputLimit,
            message: format!(
                "the result is nested deeper than {} levels (output_limit); does a table \
                 contain itself?",
                value::MAX_DEPTH
            ),
            line: None,
        },
        ConvertError::Lua(message) => Error {
            kind: ErrorKind::Runtime,
            message: format!("the result could not be read: {message}"),
            line: None,
        },
    })
}

fn memory_message(shared: &Shared) -> String {
    format!(
        "the script used more than {} bytes of memory (memory_limit); build smaller \
         tables or strings",
        shared.budget.limits.max_memory
    )
}

/// Decides what an error from Lua means; the message is at most
/// [`MAX_MESSAGE`] bytes (plus a note).
fn classify(shared: &Shared, error: &mlua::Error) -> Error {
    let mut error = classify_full(shared, error);
    if error.message.len() > MAX_MESSAGE {
        error.message = truncate(&error.message, MAX_MESSAGE).into_owned();
    }
    error
}

fn classify_full(shared: &Shared, error: &mlua::Error) -> Error {
    if let Some(kind) = shared.budget.tripped() {
        return limit_error(shared, kind);
    }
    match root(error) {
        mlua::Error::MemoryError(_) => Error {
            kind: ErrorKind::MemoryLimit,
            message: memory_message(shared),
            line: None,
        },
        mlua::Error::SyntaxError { message, .. } => {
            let (line, message) = split_location(message);
            Error {
                kind: ErrorKind::Syntax,
                message: format!("syntax error: {message}"),
                line,
            }
        }
        // Luau's out-of-memory error, re-raised as a string by the
        // trampoline's `xpcall`.
        mlua::Error::RuntimeError(message) if strip_traceback(message) == OUT_OF_MEMORY => Error {
            kind: ErrorKind::MemoryLimit,
            message: memory_message(shared),
            line: None,
        },
        mlua::Error::RuntimeError(message) => {
            let (line, message) = split_location(strip_traceback(message));
            // An uncaught callback failure keeps the callback's kind.
            let kind = match &*lock(&shared.callback_failure) {
                Some(failure) if failure.message == message => failure.kind,
                _ => ErrorKind::Runtime,
            };
            Error {
                kind,
                message: message.to_string(),
                line,
            }
        }
        other => {
            let text = other.to_string();
            let (line, message) = split_location(strip_traceback(&text));
            Error {
                kind: ErrorKind::Runtime,
                message: message.to_string(),
                line,
            }
        }
    }
}

/// The message of Luau's memory error (`LUA_ERRMEM`).
const OUT_OF_MEMORY: &str = "not enough memory";

fn root(error: &mlua::Error) -> &mlua::Error {
    let mut current = error;
    while let Some(parent) = current.parent() {
        current = parent;
    }
    current
}

fn limit_error(shared: &Shared, kind: ErrorKind) -> Error {
    let limits = &shared.budget.limits;
    let message = match kind {
        ErrorKind::Timeout => format!(
            "the script did not finish within {} ms (timeout); do less work per run or ask \
             the callbacks for less data",
            limits.timeout.as_millis()
        ),
        ErrorKind::InstructionLimit => format!(
            "the script ran more than {} instructions (instruction_limit); look for an \
             endless loop or process less data",
            limits.max_instructions
        ),
        ErrorKind::MemoryLimit => memory_message(shared),
        ErrorKind::OutputLimit => format!(
            "print output went over {} bytes (output_limit); print less and return a \
             summary instead",
            limits.max_output
        ),
        ErrorKind::CallbackLimit => format!(
            "the script made more than {} callback calls (callback_limit); call callbacks \
             outside loops and ask for more data per call",
            limits.max_callbacks
        ),
        ErrorKind::Cancelled => {
            "the run was cancelled: the process that started it is gone".to_string()
        }
        other => format!("the script broke its {} limit", other.name()),
    };
    Error {
        kind,
        message,
        line: *lock(&shared.limit_line),
    }
}

fn strip_traceback(message: &str) -> &str {
    let message = message
        .split("\nstack traceback:")
        .next()
        .unwrap_or(message);
    message.trim_end()
}

/// Splits `"script:12: message"` into `(Some(12), "message")`.
fn split_location(message: &str) -> (Option<u32>, &str) {
    let located = message.strip_prefix("script:").and_then(|rest| {
        let (digits, rest) = rest.split_once(':')?;
        let line = digits.parse::<u32>().ok()?;
        Some((Some(line), rest.trim_start()))
    });
    located.unwrap_or((None, message))
}

#[cfg(test)]
mod tests;
