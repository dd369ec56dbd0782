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
//! The counter and the flags live in one per-run [`Hot`] block. Each run
//! takes one of [`SLOTS`] static slots, and its state gets that slot's own
//! handler (one function per slot), which finds the block with a single
//! load, in every thread of the state (coroutines included): no call and
//! no thread-local at every loop iteration, which made the check cost
//! about a third of a tight loop. The slot is freed with the block, after
//! its handler has left the state. Should every slot be taken, the run
//! gets the shared handler, which finds the block through the Lua thread's
//! data pointer (`lua_getthreaddata`) and, in coroutines (whose data
//! pointer is empty), through a thread-local (a run owns its OS thread for
//! each slice). [`install`] sets both at the start of each run and
//! [`clear`] unsets them at its end.

use std::cell::Cell;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
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
    /// For a run on the inline path: the Luau thread the run's script
    /// runs in, the only one the interrupt may yield (null otherwise).
    yield_thread: AtomicPtr<ffi::lua_State>,
    /// Whether the budget check in progress may yield: it runs in
    /// `yield_thread`, at a point where Luau can yield (not inside a C
    /// function, a metamethod or a script's own coroutine).
    may_yield: AtomicBool,
    /// The slot this block holds ([`NO_SLOT`] when every slot was taken).
    slot: AtomicUsize,
}

impl Drop for Hot {
    fn drop(&mut self) {
        let slot = *self.slot.get_mut();
        if slot != NO_SLOT {
            SLOT_HOT[slot].store(std::ptr::null_mut(), Ordering::Release);
        }
    }
}

/// Runs that can have a slot at once: more than the inline and threaded
/// runs that may be in flight together (64 + 8).
pub const SLOTS: usize = 80;

const NO_SLOT: usize = usize::MAX;

/// The block of the run that holds each slot (null when free).
static SLOT_HOT: [AtomicPtr<Hot>; SLOTS] = [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];

macro_rules! slot_handlers {
    ($($slot:literal)*) => { [$(slot_interrupt::<$slot> as InterruptFn),*] };
}

/// The handler of each slot.
static SLOT_HANDLERS: [InterruptFn; SLOTS] = slot_handlers!(
    0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19
    20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39
    40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59
    60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79
);

/// Takes a free slot for `hot`, if any.
fn take_slot(hot: *mut Hot) -> Option<usize> {
    (0..SLOTS).find(|&slot| {
        SLOT_HOT[slot]
            .compare_exchange(
                std::ptr::null_mut(),
                hot,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    })
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
/// The third argument of `check` says whether it may return
/// [`VmState::Yield`] (see [`Handle::set_yield_thread`]).
pub fn install<F>(lua: &Lua, flags: StopFlags, check: F) -> mlua::Result<Handle>
where
    F: Fn(&Lua, u64, bool) -> mlua::Result<VmState> + Send + 'static,
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
        yield_thread: AtomicPtr::new(std::ptr::null_mut()),
        may_yield: AtomicBool::new(false),
        slot: AtomicUsize::new(NO_SLOT),
    });
    let pointer = Arc::as_ptr(&hot);
    let slot = take_slot(pointer as *mut Hot);
    if let Some(slot) = slot {
        hot.slot.store(slot, Ordering::Relaxed);
    }
    let handler = slot.map_or(counting_interrupt as InterruptFn, |slot| {
        SLOT_HANDLERS[slot]
    });
    let handler_hot = Arc::clone(&hot);
    lua.set_interrupt(move |lua| {
        let hot = &*handler_hot;
        let steps = hot.steps();
        let result = check(lua, steps, hot.may_yield.load(Ordering::Relaxed));
        let next = if result.is_ok() { BATCH } else { 1 };
        hot.batch_started.store(next, Ordering::Relaxed);
        hot.countdown.store(next, Ordering::Relaxed);
        result
    });
    CURRENT.with(|c| c.set(pointer));
    // SAFETY: `set_interrupt` put mlua's handler (the same function as read
    // above) in the slot again; it is replaced by the counting handler,
    // which calls it. The block stays alive as long as the closure (held
    // by the state) and is unset by `clear` before the closure is removed;
    // its slot is freed when it goes, after `remove_interrupt` or the next
    // `set_interrupt` has taken the slot's handler out of the state.
    unsafe {
        lua.exec_raw::<()>((), |state| {
            ffi::lua_setthreaddata(state, pointer as *mut std::ffi::c_void);
            (*ffi::lua_callbacks(state)).interrupt = Some(handler);
        })?;
    }
    Ok(Handle(hot))
}

/// The installed handler's per-run block, for a run that is resumed in
/// slices (the inline path): each slice may run on another OS thread.
pub struct Handle(Arc<Hot>);

impl Handle {
    /// Lets the budget check yield `thread` (the Luau thread the script
    /// runs in) at its yieldable points, and points that thread's data at
    /// the run's block.
    pub fn set_yield_thread(&self, lua: &Lua, thread: &mlua::Thread) -> mlua::Result<()> {
        // SAFETY: the thread is pushed by `exec_raw`; only its data pointer
        // is set, and the block outlives it (`clear_thread` unsets it).
        let state = unsafe {
            lua.exec_raw::<mlua::LightUserData>(thread, |state| {
                let thread_state = ffi::lua_tothread(state, -1);
                ffi::lua_setthreaddata(thread_state, Arc::as_ptr(&self.0) as *mut _);
                ffi::lua_pop(state, 1);
                ffi::lua_pushlightuserdata(state, thread_state as *mut std::ffi::c_void);
            })?
        };
        self.0
            .yield_thread
            .store(state.0 as *mut ffi::lua_State, Ordering::Relaxed);
        Ok(())
    }

    /// Makes this run the current one on this OS thread until the guard
    /// is dropped (for coroutines the script creates, and for
    /// [`uncounted_steps`]).
    pub fn enter(&self) -> Entered {
        CURRENT.with(|c| c.set(Arc::as_ptr(&self.0)));
        Entered
    }

    /// Unsets the yield thread's data pointer before the block may go.
    pub fn clear_thread(&self) {
        let state = self
            .0
            .yield_thread
            .swap(std::ptr::null_mut(), Ordering::Relaxed);
        if !state.is_null() {
            // SAFETY: the pointer is the run's Luau thread, still alive
            // (the caller holds it).
            unsafe { ffi::lua_setthreaddata(state, std::ptr::null_mut()) };
        }
    }
}

/// `yield_call(...)`, for the callback wrappers of an inline run: yields
/// the run's Luau thread with its arguments when it is called in that
/// thread where Luau can yield (not in a script's own coroutine, a
/// metamethod or a C function's callback), and returns nothing otherwise.
/// One C call, where checking with `coroutine.running` and
/// `coroutine.isyieldable` took two more (about a tenth of a callback's
/// cost).
///
/// # Safety
///
/// Called by Luau as a C function.
pub unsafe extern "C-unwind" fn yield_call(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: a thread's data pointer is null or its run's block, which
    // outlives it (see `install` and `Handle::clear_thread`).
    let hot = unsafe { (ffi::lua_getthreaddata(state) as *const Hot).as_ref() };
    let in_run_thread = hot.is_some_and(|hot| hot.yield_thread.load(Ordering::Relaxed) == state);
    // SAFETY: `state` is the running thread.
    if in_run_thread && unsafe { ffi::lua_isyieldable(state) } != 0 {
        // SAFETY: returning `lua_yield` from a C function is how Luau
        // yields from C (as `coroutine.yield` does).
        return unsafe { ffi::lua_yield(state, ffi::lua_gettop(state)) };
    }
    0
}

/// See [`Handle::enter`].
pub struct Entered;

impl Drop for Entered {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(std::ptr::null()));
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

/// The handler of slot `SLOT`.
unsafe extern "C-unwind" fn slot_interrupt<const SLOT: usize>(
    state: *mut ffi::lua_State,
    gc: c_int,
) {
    // GC steps call the interrupt too; like mlua, ignore them.
    if gc >= 0 {
        return;
    }
    // SAFETY: this handler is in a state only while the run holding the
    // slot has its block alive (see `install`).
    if let Some(hot) = unsafe { SLOT_HOT[SLOT].load(Ordering::Acquire).as_ref() } {
        // SAFETY: as for `count`.
        unsafe { count(hot, state, gc) }
    }
}

/// The handler of a run without a slot.
unsafe extern "C-unwind" fn counting_interrupt(state: *mut ffi::lua_State, gc: c_int) {
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
    if let Some(hot) = unsafe { hot.as_ref() } {
        // SAFETY: as for `count`.
        unsafe { count(hot, state, gc) }
    }
}

/// Counts one step of `hot`'s run, in `state`; runs the budget check
/// (mlua's handler) when it is due.
///
/// # Safety
///
/// `state` is the running Luau thread and `hot` the block of its run.
#[inline(always)]
unsafe fn count(hot: &Hot, state: *mut ffi::lua_State, gc: c_int) {
    let left = hot.countdown.load(Ordering::Relaxed).saturating_sub(1);
    hot.countdown.store(left, Ordering::Relaxed);
    let due = left == 0
        || (left.is_multiple_of(FLAG_EVERY) && hot.flags.iter().any(|f| f.load(Ordering::Relaxed)));
    if !due {
        return;
    }
    let yield_thread = hot.yield_thread.load(Ordering::Relaxed);
    if !yield_thread.is_null() {
        // SAFETY: `state` is the running thread; Luau's own test.
        let yieldable = state == yield_thread && unsafe { ffi::lua_isyieldable(state) } != 0;
        hot.may_yield.store(yieldable, Ordering::Relaxed);
    }
    if let Some(handler) = hot.mlua_handler {
        // SAFETY: `handler` is mlua's interrupt for this state (saved by
        // `install`). It may raise a Lua error, which unwinds through this
        // frame; nothing here needs dropping.
        unsafe { handler(state, gc) }
    }
}

/// Held by the tests that count slots or take them all, so that they do
/// not run at the same time (the other tests' runs hold a slot each at
/// most, and get the shared handler while every slot is taken).
#[cfg(test)]
pub static SLOT_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
pub fn lock_slot_tests() -> std::sync::MutexGuard<'static, ()> {
    SLOT_TESTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Slots held by runs (or by [`hold_free_slots`]) at this moment.
#[cfg(test)]
pub fn slots_in_use() -> usize {
    SLOT_HOT
        .iter()
        .filter(|slot| !slot.load(Ordering::Acquire).is_null())
        .count()
}

/// Takes every free slot, so that the runs started until
/// [`release_slots`] get the shared handler. The slots hold a dangling
/// marker: no state gets their handlers while they are held.
#[cfg(test)]
pub fn hold_free_slots() -> Vec<usize> {
    let marker = std::ptr::NonNull::<Hot>::dangling().as_ptr();
    std::iter::from_fn(|| take_slot(marker)).collect()
}

#[cfg(test)]
pub fn release_slots(slots: Vec<usize>) {
    for slot in slots {
        SLOT_HOT[slot].store(std::ptr::null_mut(), Ordering::Release);
    }
}
