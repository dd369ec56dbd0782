//! The inline path: a run executed in slices by the calling process, on
//! its own scheduler, with no thread hop and no helper process per call.
//!
//! The script runs as a Luau thread (coroutine) of a pooled state held by
//! an [`InlineRun`]. Each [`InlineRun::step`] resumes it for at most one
//! slice and says what happened ([`Step`]):
//!
//! * the script called a callback: the callback wrapper yielded the
//!   thread with the callback's number and arguments (no Rust function
//!   runs for the call itself), and the caller runs the callback and
//!   resumes the run with its answer ([`Input::Answer`]);
//! * the slice ([`SLICE`] of interpreter time) is used up: the interrupt
//!   yielded at a yieldable point, and the caller resumes it when it likes
//!   ([`Input::Go`]);
//! * the run ended, with the same result or failure a threaded run gives;
//! * the run was *abandoned*: it met something it cannot bound in time
//!   here, and the caller must run the script again from the start on the
//!   threaded path ([`super::run`]). Scripts and callbacks are read-only,
//!   so the only visible effect is that callbacks may be called again.
//!
//! # The bound on the scheduler
//!
//! Where Luau cannot yield (inside a C function: a `table.sort`
//! comparator, a metamethod, `gsub` with a function, the pattern matcher,
//! a coroutine of the script's own) the interrupt cannot end a slice.
//! There the run is abandoned instead once the slice is older than
//! [`HARD_CAP`]: the abandonment is a tripped limit, raised again at every
//! step, so `pcall` cannot swallow it. A C function that does a lot of work
//! without reaching the interrupt is stopped before it starts: the library
//! wrappers (`stdlib.rs`) abandon the inline run when a string or table
//! argument is larger than [`MAX_SCAN`] / [`MAX_ITEMS`], and a callback
//! called where the wrapper cannot yield abandons it too. What is left is
//! bounded by the code size ([`MAX_CODE`], compiled in the slice) and by
//! what one allocation may cost under the run's memory limit (the inline
//! path is only taken with a memory limit of at most [`MAX_MEMORY`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlua::chunk::ChunkMode;
use mlua::thread::ThreadStatus;
use mlua::{MultiValue, Thread, Value as LuaValue, VmState};
use serde_json::Value;

use super::*;

/// Interpreter time of one slice.
pub const SLICE: Duration = Duration::from_micros(200);

/// Longest a slice may run where it cannot yield before the run is
/// abandoned.
pub const HARD_CAP: Duration = Duration::from_millis(1);

/// Largest string a pattern or formatting function may get on the inline
/// path (larger ones abandon it).
pub const MAX_SCAN: usize = 16 * 1024;

/// Largest output a copying function (`string.rep`, `format`, `upper`,
/// ...) may build on the inline path.
pub const MAX_BUILD: usize = 1024 * 1024;

/// Largest table `table.concat` may join on the inline path.
pub const MAX_ITEMS: usize = 16 * 1024;

/// Largest script run inline (compiling it is part of the first slice).
pub const MAX_CODE: usize = 8 * 1024;

/// Largest memory limit run inline: one allocation (a string
/// concatenation, `string.rep`) copies at most this much in C.
pub const MAX_MEMORY: usize = 16 * 1024 * 1024;

/// Inline runs in flight at once (each holds a Lua state); further runs go
/// to the threaded path.
pub const MAX_INLINE_RUNS: usize = 64;

static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Inline runs in flight now (each holds one of [`MAX_INLINE_RUNS`]).
pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Relaxed).min(MAX_INLINE_RUNS)
}

/// What the caller gives the next slice.
#[derive(Debug)]
pub enum Input {
    /// Start or continue.
    Go,
    /// The answer to the callback the run asked for.
    Answer(Result<Value, HostError>),
}

/// What a slice ended with.
#[derive(Debug)]
pub enum Step {
    /// The script called callback number `index` (its place in the
    /// callback list the run was started with): run it, then resume the
    /// run with [`Input::Answer`] within `wait`.
    Callback {
        index: usize,
        args: Vec<Value>,
        wait: Duration,
    },
    /// The slice is used up; resume with [`Input::Go`].
    Continue,
    /// The run ended.
    Done(Box<Result<Outcome, Failure>>),
    /// Run the script again on the threaded path; this run is over.
    Abandon,
}

/// The inline part of a run's shared state.
pub(super) struct Ctl {
    /// When the current slice started, in ns after the run started.
    slice_started: AtomicU64,
    /// Set when the interrupt yields the thread to end a slice.
    slice_yield: AtomicBool,
}

impl Ctl {
    /// Called at every budget check: yield when the slice is used up and
    /// Luau can yield here, abandon when it cannot and the slice is past
    /// [`HARD_CAP`].
    pub(super) fn slice_verdict(
        &self,
        budget: &Budget,
        may_yield: bool,
    ) -> Result<VmState, ErrorKind> {
        let now = budget.started.elapsed().as_nanos() as u64;

        let elapsed = now.saturating_sub(self.slice_started.load(Ordering::Relaxed));
        if elapsed < SLICE.as_nanos() as u64 {
            Ok(VmState::Continue)
        } else if may_yield {
            self.slice_yield.store(true, Ordering::Relaxed);
            Ok(VmState::Yield)
        } else if elapsed >= HARD_CAP.as_nanos() as u64 {
            Err(budget.trip(ErrorKind::Abandoned))
        } else {
            Ok(VmState::Continue)
        }
    }
}

/// The callback number a wrapper passes (a Lua number).
fn callback_index(value: &LuaValue) -> Option<usize> {
    match value {
        LuaValue::Integer(index) => usize::try_from(*index).ok(),
        LuaValue::Number(index) if index.fract() == 0.0 && *index >= 0.0 => Some(*index as usize),
        _ => None,
    }
}

fn is_pending_marker(value: Option<&LuaValue>) -> bool {
    matches!(value, Some(LuaValue::LightUserData(data)) if data.0 == pending_marker_pointer())
}

fn pending_marker_pointer() -> *mut std::ffi::c_void {
    &PENDING_ANCHOR as *const u8 as *mut std::ffi::c_void
}

/// The first value a callback wrapper yields a call with; resuming the
/// wrapper with it sends the call to the dispatcher instead.
pub(super) fn pending_marker() -> LuaValue {
    LuaValue::LightUserData(mlua::LightUserData(pending_marker_pointer()))
}

static PENDING_ANCHOR: u8 = 0;

/// Raises the inline run's abandonment (a sticky limit) when `size` is
/// above `max`; does nothing on the threaded path. Called by the library
/// wrappers before a C function that would work on `size` units.
pub(super) fn check_size(lua: &Lua, size: usize, max: usize) -> mlua::Result<()> {
    if size <= max {
        return Ok(());
    }
    let Some(current) = lua.app_data_ref::<Current>().map(|c| Arc::clone(&c.0)) else {
        return Ok(());
    };
    if current.inline.is_none() {
        return Ok(());
    }
    Err(mlua::Error::external(LimitHit(
        current.budget.trip(ErrorKind::Abandoned),
    )))
}

/// A run on the inline path. Dropping it unfinished drops its Lua state.
pub struct InlineRun {
    /// `None` once the run is over.
    live: Option<Live>,
    shared: Arc<Shared>,
    /// The run's callback names, by number.
    names: Vec<String>,
    /// The callback the run waits for, and how long it may take.
    waiting: Option<(usize, Duration)>,
    _slot: Slot,
}

struct Live {
    // Field order: the thread and function go before the state.
    thread: Thread,
    function: Option<Function>,
    hot: interrupt::Handle,
    prepared: Prepared,
}

/// One of [`MAX_INLINE_RUNS`].
struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for InlineRun {
    fn drop(&mut self) {
        if let Some(live) = self.live.take() {
            live.hot.clear_thread();
        }
    }
}

/// Whether a run with these limits and code may take the inline path.
pub fn eligible(code: &[u8], limits: &Limits) -> bool {
    code.len() <= MAX_CODE && limits.max_memory <= MAX_MEMORY
}

impl InlineRun {
    /// Prepares a run (no script code runs yet). `None` when it is not
    /// eligible ([`eligible`]) or [`MAX_INLINE_RUNS`] are in flight: run it
    /// on the threaded path then.
    pub fn new(
        code: &[u8],
        callbacks: &[String],
        limits: Limits,
        cancel: Arc<AtomicBool>,
    ) -> Option<Result<InlineRun, Failure>> {
        if !eligible(code, &limits) {
            return None;
        }
        if IN_FLIGHT.fetch_add(1, Ordering::Relaxed) >= MAX_INLINE_RUNS {
            IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let slot = Slot;
        let shared = Arc::new(Shared {
            budget: Budget::new(limits, cancel),
            output: Mutex::new(String::new()),
            host: Mutex::new(Box::new(NoHost)),
            limit_line: Mutex::new(None),
            callback_failure: Mutex::new(None),
            inline: Some(Ctl {
                slice_started: AtomicU64::new(0),
                slice_yield: AtomicBool::new(false),
            }),
        });
        let started = checkout().and_then(|prepared| {
            let hot = begin(&prepared, &shared, callbacks, true)?;
            let _entered = hot.enter();
            let lua = &prepared.lua;
            let prepare = || -> mlua::Result<(Thread, Function)> {
                let thread = lua.create_thread(prepared.trampoline.clone())?;
                hot.set_yield_thread(lua, &thread)?;
                let function = lua
                    .load(code)
                    .set_name("=script")
                    .set_mode(ChunkMode::Text)
                    .into_function()?;
                Ok((thread, function))
            };
            match prepare() {
                Ok((thread, function)) => Ok(Ok(Live {
                    thread,
                    function: Some(function),
                    hot,
                    prepared,
                })),
                Err(error) => {
                    hot.clear_thread();
                    let failure = failure(&shared, Some(lua), classify(&shared, &error));
                    drop(_entered);
                    finish_state(&shared, prepared, &failure_result(failure.clone()));
                    Ok(Err(failure))
                }
            }
        });
        Some(match started {
            Ok(Ok(live)) => Ok(InlineRun {
                live: Some(live),
                shared,
                names: callbacks.to_vec(),
                waiting: None,
                _slot: slot,
            }),
            Ok(Err(failure)) => Err(failure),
            Err(error) => Err(failure(&shared, None, classify(&shared, &error))),
        })
    }

    /// Wall time left before the run's deadline.
    pub fn remaining(&self) -> Duration {
        self.shared
            .budget
            .deadline
            .saturating_duration_since(Instant::now())
    }

    /// Runs one slice. After [`Step::Done`] or [`Step::Abandon`] the run is
    /// over and further steps answer [`Step::Abandon`].
    pub fn step(&mut self, input: Input) -> Step {
        self.step_at(input, Instant::now())
    }

    /// [`InlineRun::step`] for a caller that read the clock just before
    /// (`now`): the slice is timed from there, and a callback call it
    /// ends with is charged and given its wait at that time.
    pub fn step_at(&mut self, input: Input, now: Instant) -> Step {
        let Some(live) = self.live.as_mut() else {
            return Step::Abandon;
        };
        let shared = &self.shared;
        let ctl = shared.inline.as_ref().expect("inline run");
        let entered = live.hot.enter();
        ctl.slice_started.store(
            now.saturating_duration_since(shared.budget.started)
                .as_nanos() as u64,
            Ordering::Relaxed,
        );
        let lua = &live.prepared.lua;
        let mut resumed = match input {
            Input::Go => match live.function.take() {
                Some(function) => live.thread.resume::<MultiValue>(function),
                None => live.thread.resume::<MultiValue>(()),
            },
            Input::Answer(answer) => {
                let (index, wait) = self.waiting.take().unwrap_or((usize::MAX, Duration::ZERO));
                let name = self.names.get(index).map_or("", String::as_str);
                match answer_callback(lua, shared, name, wait, answer) {
                    Ok(Called::Value(value)) => live.thread.resume((true, value)),
                    Ok(Called::Failed(failure)) => {
                        let message = failure.message.clone();
                        *lock(&shared.callback_failure) = Some(failure);
                        match lua.create_string(message) {
                            Ok(message) => live.thread.resume((false, message)),
                            Err(error) => Err(error),
                        }
                    }
                    // A broken limit (the deadline, cancellation) is
                    // tripped: it is raised again at the next step and
                    // reported whatever the script does with this error.
                    Err(_) => live.thread.resume((false, "the run broke a limit")),
                }
            }
        };
        // A callback request (it starts with the marker) is always a yield;
        // anything else asks the thread.
        let yielded = |resumed: &mlua::Result<MultiValue>| match resumed {
            Ok(values) if is_pending_marker(values.front()) => true,
            Ok(_) => live.thread.status() == ThreadStatus::Resumable,
            Err(_) => false,
        };
        while yielded(&resumed) {
            if shared.budget.tripped() == Some(ErrorKind::Abandoned) {
                drop(entered);
                self.abandon();
                return Step::Abandon;
            }
            let slice_over = ctl.slice_yield.swap(false, Ordering::Relaxed);
            let request = match &resumed {
                Ok(values) if is_pending_marker(values.front()) => {
                    match take_request(shared, &self.names, values, now) {
                        Some(request) => Some(request),
                        None => {
                            // The wrapper goes the general way, which
                            // reports what is wrong with the call.
                            resumed = live.thread.resume(pending_marker());
                            continue;
                        }
                    }
                }
                _ => None,
            };
            return match request {
                Some((index, args)) => {
                    let wait = shared.budget.callback_wait_at(now);
                    self.waiting = Some((index, wait));
                    Step::Callback { index, args, wait }
                }
                None if slice_over => Step::Continue,
                None => {
                    // The script yielded the run's thread itself (a
                    // `coroutine.yield` outside any coroutine of its own):
                    // the threaded path reports that error.
                    drop(entered);
                    self.abandon();
                    Step::Abandon
                }
            };
        }
        let result = match resumed {
            Ok(values) => finish(shared, values),
            Err(error) => Err(classify(shared, &error)),
        };
        if shared.budget.tripped() == Some(ErrorKind::Abandoned) {
            drop(entered);
            self.abandon();
            return Step::Abandon;
        }
        let result = result
            .map(|value| Outcome {
                value,
                output: take_output(shared),
                stats: stats(shared, Some(lua)),
            })
            .map_err(|error| failure(shared, Some(lua), error));
        drop(entered);
        let live = self.live.take().expect("live run");
        live.hot.clear_thread();
        let Live {
            thread,
            function,
            hot,
            prepared,
        } = live;
        drop((thread, function, hot));
        finish_state(shared, prepared, &result);
        Step::Done(Box::new(result))
    }

    /// Ends the run without a result; its state is dropped.
    fn abandon(&mut self) {
        if let Some(live) = self.live.take() {
            live.hot.clear_thread();
        }
    }
}

/// A callback request yielded by a wrapper (`pending, index, args...`),
/// taken as the dispatcher would take it: its arguments bounded in total
/// by `max_output`, and the call charged to the budget. `None` when it
/// cannot be taken as it is; the dispatcher then reports why.
fn take_request(
    shared: &Shared,
    names: &[String],
    values: &MultiValue,
    now: Instant,
) -> Option<(usize, Vec<Value>)> {
    let index = values.get(1).and_then(callback_index)?;
    if index >= names.len() {
        return None;
    }
    let args = match value::to_json_array(values.iter().skip(2), shared.budget.limits.max_output) {
        Ok(Value::Array(items)) => items,
        _ => return None,
    };
    shared.budget.charge_callback_at(now).ok()?;
    Some((index, args))
}

fn failure_result(failure: Failure) -> Result<Outcome, Failure> {
    Err(failure)
}

/// After an inline run: the state goes back to the pool when its run kept
/// within its limits, as after a threaded run.
fn finish_state(shared: &Shared, prepared: Prepared, result: &Result<Outcome, Failure>) {
    interrupt::clear(Some(&prepared.lua));
    prepared.lua.remove_interrupt();
    if reusable(shared, result) && end(&prepared).is_ok() {
        checkin(prepared);
    }
}

/// The host of an inline run: never called (callbacks yield instead).
struct NoHost;

impl Host for NoHost {
    fn call(&mut self, _: &str, _: Vec<Value>, _: Duration) -> Result<Value, HostError> {
        Err(HostError::Gone)
    }
}

#[cfg(test)]
mod tests;
