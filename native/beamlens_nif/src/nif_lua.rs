//! NIF adapters for the Lua sandbox.
//!
//! `lua_eval/4` starts a run and returns `{:ok, ref, run}` at once. The run
//! executes on the shared runtime's blocking pool (never on a scheduler),
//! holding a job slot and one of [`MAX_CONCURRENT_RUNS`] Lua slots. It talks
//! to one Elixir process, the *runner* given as `recipient`:
//!
//! * for each callback call it sends
//!   `{ref, {:lua_callback, reply, name, args}}` and waits (bounded) until
//!   the runner answers with `lua_callback_reply(reply, answer)` (or
//!   `lua_callback_reply_large/2` for large answers), where `answer` is
//!   `{:ok, value}`, `{:error, message}` or `:timeout`;
//!   Once the runner has named its callback helper process
//!   (`lua_set_helper/2`), the request goes straight to that helper, which
//!   answers the same way; the Lua thread then bounds the wait itself and,
//!   if the helper exits or does not answer in time, sends the runner
//!   `{ref, {:lua_helper_failed, pid}}` and asks the runner again for the
//!   next call;
//! * at the end it sends exactly one `{ref, {:ok, {value, output, stats}}}`
//!   or `{ref, {:error, {kind, message, details}}}`.
//!
//! `run` is a resource owned by the runner: when the runner exits (or
//! calls `lua_cancel/1`), the run is cancelled at its next interrupt check,
//! and a callback it waits for fails at once.
//!
//! Luau's interrupt stops a script within its timeout, including inside
//! pattern matching; the library functions that could loop for long in C
//! are replaced or wrapped (see `sandbox/stdlib.rs`), the others are
//! bounded by the memory limit. The runner still keeps its own deadline
//! (timeout + 5 s) and answers `:timeout` by itself should a reply never
//! come.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use rustler::{Binary, Encoder, Env, LocalPid, OwnedEnv, ResourceArc, Term};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::atoms;
use crate::convert::{self, Json, Limits as TermLimits};
use crate::error::{Error, Result};
use crate::runtime;
use crate::sandbox::{
    self, ErrorKind, Host, HostError, InlineRun, Input, Limits, Outcome, Stats, Step,
};

/// Lua runs executing at once. Each holds a blocking-pool thread and can
/// use a CPU core until its limits stop it; further runs get `:busy`.
pub const MAX_CONCURRENT_RUNS: usize = 8;

/// Most elements (scalars, list items, map entries) accepted in one
/// callback answer. Larger answers fail the call with a readable message.
pub const MAX_CALLBACK_NODES: usize = 200_000;

/// How long the Lua thread polls for a callback answer before it parks.
const CALLBACK_SPIN: Duration = Duration::from_micros(50);

/// Extra wait for a callback answer beyond the callback timeout.
const CALLBACK_GRACE: Duration = Duration::from_millis(50);

static RUN_SLOTS: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(MAX_CONCURRENT_RUNS)));

/// A run, as held by its runner process.
pub struct LuaRun {
    cancel: Arc<AtomicBool>,
    helper: Arc<HelperSlot>,
}

/// The runner's callback helper process, once the runner has named it
/// (`lua_set_helper/2`): later callback requests go straight to it, which
/// saves two process hops per call. Cleared by the Lua thread when the
/// helper fails to answer (it then asks the runner to replace it).
#[derive(Default)]
struct HelperSlot(Mutex<Option<LocalPid>>);

impl HelperSlot {
    fn get(&self) -> Option<LocalPid> {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set(&self, pid: Option<LocalPid>) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = pid;
    }
}

#[rustler::resource_impl]
impl rustler::Resource for LuaRun {}

impl Drop for LuaRun {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Where the answer to one callback call goes. Used at most once.
pub struct CallbackReply {
    sender: Mutex<Option<SyncSender<Answer>>>,
}

#[rustler::resource_impl]
impl rustler::Resource for CallbackReply {}

/// A callback answer on its way to the Lua thread. Small values arrive
/// converted; large ones as a copied term that the Lua thread converts.
enum Answer {
    Json(Value),
    Copied(OwnedEnv, rustler::env::SavedTerm),
    Failed(String),
    TimedOut,
}

/// What the runner sent, before conversion.
enum RunnerReply<'a> {
    Value(Term<'a>),
    Failed(String),
    TimedOut,
}

/// Most elements of an answer converted on a normal scheduler.
const SMALL_ANSWER_NODES: usize = 1_000;

/// Starts a Lua run. `opts` is a map with the atom keys `:timeout`,
/// `:callback_timeout` (ms), `:max_instructions`, `:max_memory`,
/// `:max_output` (bytes) and `:max_callbacks`, all required.
#[rustler::nif]
fn lua_eval<'a>(
    env: Env<'a>,
    code: Binary<'a>,
    callbacks: Vec<String>,
    opts: Term<'a>,
    recipient: LocalPid,
) -> Term<'a> {
    match start(env, code, callbacks, opts, recipient) {
        Ok(term) => term,
        Err(error) => (atoms::error(), error).encode(env),
    }
}

fn start<'a>(
    env: Env<'a>,
    code: Binary<'a>,
    callbacks: Vec<String>,
    opts: Term<'a>,
    recipient: LocalPid,
) -> Result<Term<'a>> {
    if code.len() > sandbox::MAX_CODE_SIZE {
        return Err(Error::bad_argument(
            "code",
            format!("must be at most {} bytes", sandbox::MAX_CODE_SIZE),
        ));
    }
    sandbox::check_callback_names(&callbacks)
        .map_err(|reason| Error::bad_argument("callbacks", reason))?;
    let limits = decode_limits(opts)?;

    let slot = runtime::try_acquire_slot()?;
    let run_slot = RUN_SLOTS
        .clone()
        .try_acquire_owned()
        .map_err(|_| Error::busy(MAX_CONCURRENT_RUNS))?;
    let handle = runtime::handle()?;

    let reference = env.make_ref();
    let helper = Arc::new(HelperSlot::default());
    let mut host = ElixirHost::new(recipient, reference);
    host.helper = Some(helper.clone());
    let reply_host = ElixirHost::new(recipient, reference);
    let cancel = Arc::new(AtomicBool::new(false));
    let run = ResourceArc::new(LuaRun {
        cancel: cancel.clone(),
        helper,
    });
    let code = code.as_slice().to_vec();

    // The run goes straight to a blocking-pool thread, which also sends
    // the reply: no async task in between, so one thread hand-off each way.
    handle.spawn_blocking(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sandbox::run(&code, &callbacks, limits, Box::new(host), cancel)
        }));
        // Free the slots before replying, so that a caller may start its
        // next run as soon as it has the answer.
        drop((slot, run_slot));
        reply_host.send_final(match result {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(failure)) => Err(Error::Lua(Box::new(failure))),
            Err(payload) => Err(Error::from_panic(payload.as_ref())),
        });
    });

    Ok((atoms::ok(), reference, run).encode(env))
}

/// Answers one callback call: `result` is `{:ok, value}`,
/// `{:error, message}` or `:timeout` (the runner gave up on it). Returns
/// `:ok`, `:expired` when the run no longer waits for this answer, or
/// `:too_large` when the value has more than [`SMALL_ANSWER_NODES`]
/// elements: the caller then uses `lua_callback_reply_large/2`. Small
/// answers, the common case, are converted right here on the normal
/// scheduler (bounded work, well under a millisecond); that saves two
/// thread hand-offs per callback.
#[rustler::nif]
fn lua_callback_reply<'a>(
    env: Env<'a>,
    reply: ResourceArc<CallbackReply>,
    result: Term<'a>,
) -> Term<'a> {
    let answer = match decode_reply(result) {
        RunnerReply::Value(value) => match small_answer(value) {
            Some(json) => Answer::Json(json),
            None => return atoms::too_large().encode(env),
        },
        RunnerReply::Failed(message) => Answer::Failed(message),
        RunnerReply::TimedOut => Answer::TimedOut,
    };
    deliver(env, &reply, answer)
}

/// A callback's answer as JSON when it has at most [`SMALL_ANSWER_NODES`]
/// elements (converting it on a normal scheduler is then bounded work).
fn small_answer(value: Term) -> Option<Value> {
    let limits = TermLimits {
        max_depth: sandbox::value::MAX_DEPTH,
        max_nodes: SMALL_ANSWER_NODES,
    };
    convert::term_to_json(value, "the callback's result", limits).ok()
}

/// Like `lua_callback_reply/2`, for answers of any size: the term is only
/// copied here, on a dirty scheduler, and converted on the Lua thread
/// (converting is recursive, and a dirty scheduler's stack is too small
/// for that).
#[rustler::nif(schedule = "DirtyCpu")]
fn lua_callback_reply_large<'a>(
    env: Env<'a>,
    reply: ResourceArc<CallbackReply>,
    result: Term<'a>,
) -> Term<'a> {
    let answer = match decode_reply(result) {
        RunnerReply::Value(value) => {
            let copy = OwnedEnv::new();
            let saved = copy.save(value);
            Answer::Copied(copy, saved)
        }
        RunnerReply::Failed(message) => Answer::Failed(message),
        RunnerReply::TimedOut => Answer::TimedOut,
    };
    deliver(env, &reply, answer)
}

fn deliver<'a>(env: Env<'a>, reply: &CallbackReply, answer: Answer) -> Term<'a> {
    let sender = reply
        .sender
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    match sender.map(|sender| sender.try_send(answer)) {
        Some(Ok(())) => atoms::ok().encode(env),
        _ => atoms::expired().encode(env),
    }
}

fn decode_reply(result: Term) -> RunnerReply {
    if result.decode::<rustler::Atom>().ok() == Some(atoms::timeout()) {
        return RunnerReply::TimedOut;
    }
    match result.decode::<(rustler::Atom, Term)>() {
        Ok((tag, value)) if tag == atoms::ok() => RunnerReply::Value(value),
        Ok((tag, message)) if tag == atoms::error() => RunnerReply::Failed(
            message
                .decode::<String>()
                .unwrap_or_else(|_| "the callback failed".to_string()),
        ),
        _ => {
            RunnerReply::Failed("the callback runner sent an answer of the wrong shape".to_string())
        }
    }
}

/// Converts a callback's answer to JSON, on the Lua thread.
fn convert_answer(answer: Answer) -> std::result::Result<Value, HostError> {
    match answer {
        Answer::Json(json) => Ok(json),
        Answer::Copied(env, saved) => {
            let limits = TermLimits {
                max_depth: sandbox::value::MAX_DEPTH,
                max_nodes: MAX_CALLBACK_NODES,
            };
            env.run(|env| convert::term_to_json(saved.load(env), "the callback's result", limits))
                .map_err(|error| {
                    HostError::Failed(match error {
                        Error::BadArgument { name, reason } => {
                            format!("{name} {reason}; return less data")
                        }
                        other => other.to_string(),
                    })
                })
        }
        Answer::Failed(message) => Err(HostError::Failed(message)),
        Answer::TimedOut => Err(HostError::TimedOut),
    }
}

/// Cancels a run; its reply (`:cancelled`) still arrives.
#[rustler::nif]
fn lua_cancel(run: ResourceArc<LuaRun>) -> rustler::Atom {
    run.cancel.store(true, Ordering::Relaxed);
    atoms::ok()
}

/// Names the process that serves the run's callbacks from now on: the Lua
/// thread sends it `{ref, {:lua_callback, reply, name, args}}` directly.
/// Should it not answer in time (or exit), the Lua thread tells the runner
/// `{ref, {:lua_helper_failed, pid}}` and goes back to asking the runner.
#[rustler::nif]
fn lua_set_helper(run: ResourceArc<LuaRun>, pid: LocalPid) -> rustler::Atom {
    run.helper.set(Some(pid));
    atoms::ok()
}

/// A run on the inline path, held by the process that runs it. Dropping it
/// (the process exits, or the run ends) drops its Lua state.
pub struct LuaInline(Mutex<Option<InlineRun>>);

#[rustler::resource_impl]
impl rustler::Resource for LuaInline {}

/// Largest `:max_output` run inline: the result and callback arguments
/// are turned into terms on the calling scheduler.
const INLINE_MAX_OUTPUT: usize = 256 * 1024;

/// Starts a run on the inline path (see `sandbox/inline.rs`): the script
/// runs in this call and the next `lua_inline_resume/2` calls, each at most
/// one slice (~0.2 ms) on the caller's scheduler. Returns `{:run, run,
/// step}` with the run and what its first slice ended with, or the error
/// or `:abandon` a step can end with. A step is
///
/// * `{:callback, index, args, wait_ms}`: run callback number `index`
///   (0-based, in the order of `callbacks`) in at most `wait_ms`, then
///   `lua_inline_resume(run, answer)` with `{:ok, value}`,
///   `{:error, message}` or `:timeout`;
/// * `:yielded`: the slice is used up; `lua_inline_resume(run, :go)`;
/// * `{:ok, {value, output, stats}}` or `{:error, {kind, message, details}}`
///   as a threaded run replies;
/// * `:abandon`: run the script on the threaded path (`lua_eval/4`) instead,
///   from the start (the run is not eligible, or met something it cannot
///   bound in time inline).
///
/// Arguments are checked as `lua_eval/4` checks them.
#[rustler::nif]
fn lua_inline_start<'a>(
    env: Env<'a>,
    code: Binary<'a>,
    callbacks: Vec<String>,
    opts: Term<'a>,
) -> Term<'a> {
    if code.len() > sandbox::MAX_CODE_SIZE {
        let error = Error::bad_argument(
            "code",
            format!("must be at most {} bytes", sandbox::MAX_CODE_SIZE),
        );
        return (atoms::error(), error).encode(env);
    }
    if let Err(reason) = sandbox::check_callback_names(&callbacks) {
        return (atoms::error(), Error::bad_argument("callbacks", reason)).encode(env);
    }
    let limits = match decode_limits(opts) {
        Ok(limits) => limits,
        Err(error) => return (atoms::error(), error).encode(env),
    };
    if limits.max_output > INLINE_MAX_OUTPUT {
        return atoms::abandon().encode(env);
    }
    // Refused as a threaded run would be when every Lua slot is taken, so
    // that callers see one capacity whichever path runs their script.
    if RUN_SLOTS.available_permits() == 0 {
        let error = Error::busy(MAX_CONCURRENT_RUNS);
        return (atoms::error(), error).encode(env);
    }
    let started = std::time::Instant::now();
    match InlineRun::new(
        code.as_slice(),
        &callbacks,
        limits,
        Arc::new(AtomicBool::new(false)),
    ) {
        None => atoms::abandon().encode(env),
        Some(Err(failure)) => (atoms::error(), Error::Lua(Box::new(failure))).encode(env),
        Some(Ok(run)) => {
            let run = ResourceArc::new(LuaInline(Mutex::new(Some(run))));
            let step = inline_step(env, &run, Input::Go, started);
            (atoms::run(), run, step).encode(env)
        }
    }
}

/// Runs the next slice of an inline run; `answer` is `:go` after
/// `:yielded`, or the callback's answer after `{:callback, ...}`.
/// Returns the next step (see `lua_inline_start/3`). A callback answer of more
/// than 1,000 elements abandons the run (converting it could hold the
/// scheduler too long).
#[rustler::nif]
fn lua_inline_resume<'a>(env: Env<'a>, run: ResourceArc<LuaInline>, answer: Term<'a>) -> Term<'a> {
    let started = std::time::Instant::now();
    let input = if answer.decode::<rustler::Atom>().ok() == Some(atoms::go()) {
        Input::Go
    } else {
        Input::Answer(match decode_reply(answer) {
            RunnerReply::Value(value) => match small_answer(value) {
                Some(json) => Ok(json),
                None => {
                    *lock_inline(&run) = None;
                    return atoms::abandon().encode(env);
                }
            },
            RunnerReply::Failed(message) => Err(HostError::Failed(message)),
            RunnerReply::TimedOut => Err(HostError::TimedOut),
        })
    };
    inline_step(env, &run, input, started)
}

fn lock_inline(run: &LuaInline) -> std::sync::MutexGuard<'_, Option<InlineRun>> {
    run.0
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn inline_step<'a>(
    env: Env<'a>,
    run: &ResourceArc<LuaInline>,
    input: Input,
    started: std::time::Instant,
) -> Term<'a> {
    let mut guard = lock_inline(run);
    let Some(inline) = guard.as_mut() else {
        return atoms::abandon().encode(env);
    };
    let step = inline.step_at(input, started);
    // A slice is a share of the process's time slice (about 1 ms).
    let percent = (started.elapsed().as_micros() / 10).clamp(1, 100) as i32;
    rustler::schedule::consume_timeslice(env, percent);
    match step {
        Step::Callback { index, args, wait } => (
            atoms::callback(),
            index,
            Json(Value::Array(args)),
            wait.as_millis() as u64,
        )
            .encode(env),
        Step::Continue => atoms::yielded().encode(env),
        Step::Done(result) => {
            *guard = None;
            match *result {
                Ok(outcome) => {
                    let stats = put_stats(env, Term::map_new(env), &outcome.stats);
                    (
                        atoms::ok(),
                        (Json(outcome.value), outcome.output.as_str(), stats),
                    )
                        .encode(env)
                }
                Err(failure) => (atoms::error(), Error::Lua(Box::new(failure))).encode(env),
            }
        }
        Step::Abandon => {
            *guard = None;
            atoms::abandon().encode(env)
        }
    }
}

/// Lua runs in flight and the maximum, for tests and status.
#[rustler::nif]
fn lua_status() -> (usize, usize) {
    (
        MAX_CONCURRENT_RUNS - RUN_SLOTS.available_permits(),
        MAX_CONCURRENT_RUNS,
    )
}

/// Inline runs in flight and their maximum, for tests and status.
#[rustler::nif]
fn lua_inline_status() -> (usize, usize) {
    (sandbox::inline_in_flight(), sandbox::MAX_INLINE_RUNS)
}

/// Sends callback requests and the final reply to the runner process.
struct ElixirHost {
    recipient: LocalPid,
    /// The run's reference, kept in its own environment that is never
    /// cleared; every message copies it.
    ref_env: OwnedEnv,
    saved_ref: rustler::env::SavedTerm,
    /// The runner's callback helper, when named (see `lua_set_helper/2`).
    helper: Option<Arc<HelperSlot>>,
}

impl ElixirHost {
    fn new(recipient: LocalPid, reference: rustler::types::Reference) -> Self {
        let ref_env = OwnedEnv::new();
        let saved_ref = ref_env.save(reference);
        ElixirHost {
            recipient,
            ref_env,
            saved_ref,
            helper: None,
        }
    }

    fn send<F>(&self, build: F) -> bool
    where
        F: for<'a> FnOnce(Env<'a>) -> Term<'a>,
    {
        self.send_to(&self.recipient, build)
    }

    fn send_to<F>(&self, to: &LocalPid, build: F) -> bool
    where
        F: for<'a> FnOnce(Env<'a>) -> Term<'a>,
    {
        let mut message_env = OwnedEnv::new();
        let (ref_env, saved_ref) = (&self.ref_env, &self.saved_ref);
        message_env
            .send_and_clear(to, |env| {
                let reference = ref_env.run(|ref_env| saved_ref.load(ref_env).in_env(env));
                (reference, build(env))
            })
            .is_ok()
    }

    fn send_final(&self, result: Result<Outcome>) {
        // The runner may be gone; nobody is left to tell then.
        self.send(|env| match &result {
            Ok(outcome) => {
                let stats = put_stats(env, Term::map_new(env), &outcome.stats);
                (
                    atoms::ok(),
                    (Json(outcome.value.clone()), outcome.output.as_str(), stats),
                )
                    .encode(env)
            }
            Err(error) => (atoms::error(), error).encode(env),
        });
    }
}

impl Host for ElixirHost {
    fn call(
        &mut self,
        name: &str,
        args: Vec<Value>,
        timeout: Duration,
    ) -> std::result::Result<Value, HostError> {
        let args = Value::Array(args);
        let (sender, receiver) = mpsc::sync_channel(1);
        let reply = ResourceArc::new(CallbackReply {
            sender: Mutex::new(Some(sender)),
        });
        if let Some(pid) = self.helper.as_ref().and_then(|slot| slot.get()) {
            // Straight to the helper: this thread bounds the wait itself.
            // A helper that exits drops the reply (the channel
            // disconnects); one that hangs is replaced by the runner. Not
            // sent (the helper had already exited): ask the runner, as
            // before it named a helper.
            if self.send_to(&pid, |env| request(env, &reply, name, &args)) {
                // Only the helper holds the reply now: if it exits, the
                // channel disconnects at once.
                drop(reply);
                return match wait_answer(&receiver, timeout) {
                    Ok(answer) => convert_answer(answer),
                    Err(error) => {
                        self.forget_helper(pid);
                        Err(match error {
                            RecvTimeoutError::Timeout => HostError::TimedOut,
                            RecvTimeoutError::Disconnected => {
                                HostError::Failed("the callback process exited".to_string())
                            }
                        })
                    }
                };
            }
            self.forget_helper(pid);
        }
        if !self.send(|env| request(env, &reply, name, &args)) {
            return Err(HostError::Gone);
        }
        // The runner enforces the callback timeout itself and answers
        // `:timeout`; the grace lets that answer arrive first.
        match wait_answer(&receiver, timeout + CALLBACK_GRACE) {
            Ok(answer) => convert_answer(answer),
            Err(RecvTimeoutError::Timeout) => Err(HostError::TimedOut),
            Err(RecvTimeoutError::Disconnected) => Err(HostError::Gone),
        }
    }
}

/// The message asking for one callback call.
fn request<'a>(
    env: Env<'a>,
    reply: &ResourceArc<CallbackReply>,
    name: &str,
    args: &Value,
) -> Term<'a> {
    let args = convert::json_to_term(env, args);
    (atoms::lua_callback(), reply.clone(), name, args).encode(env)
}

impl ElixirHost {
    /// Stops using the helper `pid` and asks the runner to replace it (it
    /// kills it if it still runs).
    fn forget_helper(&self, pid: LocalPid) {
        if let Some(slot) = &self.helper {
            slot.set(None);
        }
        self.send(|env| (atoms::lua_helper_failed(), pid).encode(env));
    }
}

/// Waits at most `timeout` for a callback answer. Most callbacks answer
/// within microseconds: it polls (yielding the CPU) for a short while
/// before parking the thread, which saves a thread wake-up per call.
fn wait_answer(
    receiver: &mpsc::Receiver<Answer>,
    timeout: Duration,
) -> std::result::Result<Answer, RecvTimeoutError> {
    let started = std::time::Instant::now();
    let spin_until = started + CALLBACK_SPIN.min(timeout);
    while std::time::Instant::now() < spin_until {
        match receiver.try_recv() {
            Ok(answer) => return Ok(answer),
            Err(mpsc::TryRecvError::Empty) => std::thread::yield_now(),
            Err(mpsc::TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
        }
    }
    receiver.recv_timeout(timeout.saturating_sub(started.elapsed()))
}

/// Adds a run's stats to a details map (binary keys).
pub(crate) fn put_stats<'a>(env: Env<'a>, map: Term<'a>, stats: &Stats) -> Term<'a> {
    [
        ("instructions", stats.instructions),
        ("callbacks", u64::from(stats.callbacks)),
        ("memory", stats.memory as u64),
        ("duration_us", stats.duration.as_micros() as u64),
    ]
    .into_iter()
    .fold(map, |map, (key, value)| {
        map.map_put(key.encode(env), value.encode(env))
            .unwrap_or(map)
    })
}

/// The atom for a sandbox error kind.
pub(crate) fn kind_atom(kind: ErrorKind) -> rustler::Atom {
    match kind {
        ErrorKind::Syntax => atoms::syntax(),
        ErrorKind::Runtime => atoms::runtime(),
        ErrorKind::Timeout => atoms::timeout(),
        ErrorKind::InstructionLimit => atoms::instruction_limit(),
        ErrorKind::MemoryLimit => atoms::memory_limit(),
        ErrorKind::OutputLimit => atoms::output_limit(),
        ErrorKind::CallbackLimit => atoms::callback_limit(),
        ErrorKind::CallbackError => atoms::callback_error(),
        ErrorKind::CallbackTimeout => atoms::callback_timeout(),
        ErrorKind::NoReturn => atoms::no_return(),
        ErrorKind::Cancelled => atoms::cancelled(),
        ErrorKind::Abandoned => atoms::abandon(),
    }
}

/// Reads the limits from the options map. `Beamlens.Lua` resolves every
/// limit (the defaults live there), so each key is required.
fn decode_limits(opts: Term) -> Result<Limits> {
    if !opts.is_map() {
        return Err(Error::bad_argument("opts", "must be a map"));
    }
    let get = |key: rustler::Atom, name: &str, max: u64| -> Result<u64> {
        match opts.map_get(key) {
            Err(_) => Err(Error::bad_argument(name, "is required")),
            Ok(value) => match value.decode::<u64>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(Error::bad_argument(
                    name,
                    format!("must be an integer from 1 to {max}"),
                )),
            },
        }
    };
    Ok(Limits {
        timeout: Duration::from_millis(get(atoms::timeout(), "timeout", Limits::MAX_TIMEOUT_MS)?),
        callback_timeout: Duration::from_millis(get(
            atoms::callback_timeout(),
            "callback_timeout",
            Limits::MAX_TIMEOUT_MS,
        )?),
        max_instructions: get(
            atoms::max_instructions(),
            "max_instructions",
            Limits::MAX_INSTRUCTIONS,
        )?,
        max_memory: get(atoms::max_memory(), "max_memory", Limits::MAX_MEMORY as u64)? as usize,
        max_output: get(atoms::max_output(), "max_output", Limits::MAX_OUTPUT as u64)? as usize,
        max_callbacks: get(
            atoms::max_callbacks(),
            "max_callbacks",
            u64::from(Limits::MAX_CALLBACKS),
        )? as u32,
    })
}
