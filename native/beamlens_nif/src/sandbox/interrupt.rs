//! A cheap front for mlua's interrupt handler.
//!
//! Luau calls the interrupt at every loop iteration, function call and
//! pattern-matching step. mlua's handler (`Lua::set_interrupt`) costs about
//! 20 ns per call because it prepares error handling around the closure
//! every time, so a tight loop spent most of its time there. This module
//! installs a raw handler in front of it that only counts down a
//! thread-local counter, and calls mlua's handler (and so the budget check)
//! once per [`BATCH`] steps. Once a limit is broken it calls it at every
//! step, so the error is raised again at the very next loop iteration and a
//! script cannot keep itself alive with `pcall`. Errors are still raised by
//! mlua's handler, never by this code.
//!
//! Between two budget checks it also reads the run's stop flags (the
//! cancel flag and the watchdog's `expired` flag) every few steps: a check is
//! due at once when either is set. A pattern-matching step can scan a whole
//! string, so counting steps alone could let a deadline pass by seconds.
//!
//! The counter and the flags are thread-local: a run owns its thread from
//! start to end, [`install`] sets them at the start of each run and
//! [`clear`] at its end.

use std::cell::Cell;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mlua::{ffi, Lua, VmState};

/// Steps between two budget checks. A check costs ~40 ns (mlua's handler
/// plus a clock read), so this keeps the interrupt's share of a tight loop
/// around one nanosecond per step; a limit is noticed at most this many
/// steps late.
pub const BATCH: u32 = 256;

/// Steps between two reads of the stop flags: often enough that a run
/// stops within a few steps of its deadline, rarely enough to cost
/// nothing measurable.
const FLAG_EVERY: u32 = 8;

type InterruptFn = unsafe extern "C-unwind" fn(*mut ffi::lua_State, c_int);

thread_local! {
    /// Steps left until the next budget check.
    static COUNTDOWN: Cell<u32> = const { Cell::new(BATCH) };
    /// Steps the current countdown started from.
    static BATCH_STARTED: Cell<u32> = const { Cell::new(BATCH) };
    /// mlua's own handler, called when the countdown runs out.
    static MLUA_HANDLER: Cell<Option<InterruptFn>> = const { Cell::new(None) };
    /// The run's stop flags; `NEVER` outside a run.
    static STOP_FLAGS: Cell<[*const AtomicBool; 2]> = const { Cell::new([&NEVER, &NEVER]) };
}

static NEVER: AtomicBool = AtomicBool::new(false);

/// The flags that make the next interrupt step run a budget check. They
/// are kept alive by the installed handler.
pub struct StopFlags(pub [Arc<AtomicBool>; 2]);

/// Installs `check` as the run's interrupt: it is called with the number of
/// steps since its previous call and returns an error to stop the script.
pub fn install<F>(lua: &Lua, flags: StopFlags, check: F) -> mlua::Result<()>
where
    F: Fn(&Lua, u64) -> mlua::Result<VmState> + Send + 'static,
{
    let pointers = [Arc::as_ptr(&flags.0[0]), Arc::as_ptr(&flags.0[1])];
    lua.set_interrupt(move |lua| {
        let _keep_alive = &flags;
        let steps = uncounted_steps();
        let result = check(lua, steps);
        let next = if result.is_ok() { BATCH } else { 1 };
        BATCH_STARTED.with(|c| c.set(next));
        COUNTDOWN.with(|c| c.set(next));
        result
    });
    COUNTDOWN.with(|c| c.set(BATCH));
    BATCH_STARTED.with(|c| c.set(BATCH));
    STOP_FLAGS.with(|c| c.set(pointers));
    // SAFETY: only the interrupt slot of the state's global callbacks is
    // read and replaced; mlua's handler stays reachable through
    // `MLUA_HANDLER` and is called exactly as Luau would call it.
    unsafe {
        lua.exec_raw::<()>((), |state| {
            let callbacks = ffi::lua_callbacks(state);
            MLUA_HANDLER.with(|h| h.set((*callbacks).interrupt));
            (*callbacks).interrupt = Some(counting_interrupt);
        })
    }
}

/// Forgets the run's stop flags; call before the handler is removed.
pub fn clear() {
    STOP_FLAGS.with(|c| c.set([&NEVER, &NEVER]));
}

/// Steps taken on this thread since the last budget check (not yet
/// counted by the budget).
pub fn uncounted_steps() -> u64 {
    let started = BATCH_STARTED.with(Cell::get);
    let left = COUNTDOWN.with(Cell::get);
    u64::from(started.saturating_sub(left))
}

unsafe extern "C-unwind" fn counting_interrupt(state: *mut ffi::lua_State, gc: c_int) {
    // GC steps call the interrupt too; like mlua, ignore them.
    if gc >= 0 {
        return;
    }
    let (due, look) = COUNTDOWN.with(|c| {
        let left = c.get().saturating_sub(1);
        c.set(left);
        (left == 0, left % FLAG_EVERY == 0)
    });
    // SAFETY: the pointers are `NEVER` or flags kept alive by the handler
    // installed for the running state (see `install` and `clear`).
    let stop = look
        && STOP_FLAGS.with(|c| {
            c.get()
                .iter()
                .any(|flag| unsafe { (**flag).load(Ordering::Relaxed) })
        });
    if !due && !stop {
        return;
    }
    if let Some(handler) = MLUA_HANDLER.with(Cell::get) {
        // SAFETY: `handler` is mlua's interrupt for this state (saved by
        // `install` on this thread). It may raise a Lua error, which
        // unwinds through this frame; nothing here needs dropping.
        unsafe { handler(state, gc) }
    }
}
