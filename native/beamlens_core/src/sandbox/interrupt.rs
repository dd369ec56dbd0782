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
//! The counter and the flags live in one per-run [`Hot`] block. The handler
//! finds it through the Lua thread's data pointer (`lua_getthreaddata`, a
//! plain field read), which a thread-local in a dynamically loaded library
//! would make a `__tls_get_addr` call at every loop iteration; coroutines,
//! whose data pointer is empty, find it through a thread-local (a run owns
//! its OS thread from start to end). [`install`] sets both at the start of
//! each run and [`clear`] unsets them at its end.

use std::cell::Cell;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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

/// What the raw handler needs at every step, for one run.
struct Hot {
    /// Steps left until the next budget check.
    countdown: AtomicU32,
    /// Steps the current countdown started from.
    batch_started: AtomicU32,
    /// mlua's own handler, called when a check is due.
    mlua_handler: Option<InterruptFn>,
    /// The run's cancel and deadline flags.
    flags: [Arc<AtomicBool>; 2],
}

thread_local! {
    /// The running run's block, for coroutines (null outside a run).
    static CURRENT: Cell<*const Hot> = const { Cell::new(std::ptr::null()) };
}

/// The flags that make the next interrupt step run a budget check. They
/// are kept alive by the installed handler.
pub struct StopFlags(pub [Arc<AtomicBool>; 2]);

/// Installs `check` as the run's interrupt: it is called with the number of
/// steps since its previous call and returns an error to stop the script.
pub fn install<F>(lua: &Lua, flags: StopFlags, check: F) -> mlua::Result<()>
where
    F: Fn(&Lua, u64) -> mlua::Result<VmState> + Send + 'static,
{
    lua.set_interrupt(|_| Ok(VmState::Continue));
    // mlua's handler is now in the state's callbacks: keep it, and put the
    // counting handler in front of it.
    // SAFETY: only the interrupt slot of the state's callbacks is read.
    let mlua_handler = unsafe {
        lua.exec_raw::<Option<mlua::LightUserData>>((), |state| {
            let handler = (*ffi::lua_callbacks(state)).interrupt;
            let pointer = handler.map_or(std::ptr::null_mut(), |h| h as *mut std::ffi::c_void);
            ffi::lua_pushlightuserdata(state, pointer);
        })?
    };
    // SAFETY: the pointer was read from the same slot just above.
    let mlua_handler: Option<InterruptFn> = mlua_handler
        .filter(|p| !p.0.is_null())
        .map(|p| unsafe { std::mem::transmute::<*mut std::ffi::c_void, InterruptFn>(p.0) });
    let hot = Arc::new(Hot {
        countdown: AtomicU32::new(BATCH),
        batch_started: AtomicU32::new(BATCH),
        mlua_handler,
        flags: flags.0,
    });
    let pointer = Arc::as_ptr(&hot);
    let handler_hot = Arc::clone(&hot);
    lua.set_interrupt(move |lua| {
        let hot = &*handler_hot;
        let steps = hot.steps();
        let result = check(lua, steps);
        let next = if result.is_ok() { BATCH } else { 1 };
        hot.batch_started.store(next, Ordering::Relaxed);
        hot.countdown.store(next, Ordering::Relaxed);
        result
    });
    CURRENT.with(|c| c.set(pointer));
    // SAFETY: `set_interrupt` put mlua's handler (the same function as read
    // above) in the slot again; it is replaced by the counting handler,
    // which calls it. The block stays alive as long as the closure (held
    // by the state) and is unset by `clear` before the closure is removed.
    unsafe {
        lua.exec_raw::<()>((), |state| {
            ffi::lua_setthreaddata(state, pointer as *mut std::ffi::c_void);
            (*ffi::lua_callbacks(state)).interrupt = Some(counting_interrupt);
        })
    }
}

impl Hot {
    fn steps(&self) -> u64 {
        let started = self.batch_started.load(Ordering::Relaxed);
        let left = self.countdown.load(Ordering::Relaxed);
        u64::from(started.saturating_sub(left))
    }
}

/// Forgets the run's block; call before the handler is removed.
pub fn clear(lua: Option<&Lua>) {
    CURRENT.with(|c| c.set(std::ptr::null()));
    if let Some(lua) = lua {
        // SAFETY: only the main thread's data pointer is reset.
        let _ = unsafe {
            lua.exec_raw::<()>((), |state| {
                ffi::lua_setthreaddata(state, std::ptr::null_mut())
            })
        };
    }
}

/// Steps taken on this thread since the last budget check (not yet
/// counted by the budget).
pub fn uncounted_steps() -> u64 {
    let current = CURRENT.with(Cell::get);
    // SAFETY: non-null only while the run's handler (which owns the block)
    // is installed.
    unsafe { current.as_ref() }.map_or(0, Hot::steps)
}

unsafe extern "C-unwind" fn counting_interrupt(state: *mut ffi::lua_State, gc: c_int) {
    // GC steps call the interrupt too; like mlua, ignore them.
    if gc >= 0 {
        return;
    }
    // SAFETY: the data pointer of a state running a script is its run's
    // block (set by `install`), or null in coroutines, which use the
    // thread-local; both are unset by `clear` before the block is freed.
    let mut hot = unsafe { ffi::lua_getthreaddata(state) } as *const Hot;
    if hot.is_null() {
        hot = CURRENT.with(Cell::get);
    }
    let Some(hot) = (unsafe { hot.as_ref() }) else {
        return;
    };
    let left = hot.countdown.load(Ordering::Relaxed).saturating_sub(1);
    hot.countdown.store(left, Ordering::Relaxed);
    let due = left == 0
        || (left % FLAG_EVERY == 0 && hot.flags.iter().any(|f| f.load(Ordering::Relaxed)));
    if !due {
        return;
    }
    if let Some(handler) = hot.mlua_handler {
        // SAFETY: `handler` is mlua's interrupt for this state (saved by
        // `install`). It may raise a Lua error, which unwinds through this
        // frame; nothing here needs dropping.
        unsafe { handler(state, gc) }
    }
}
