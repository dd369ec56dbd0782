use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

type Callback = Box<dyn FnMut(Vec<Value>) -> Result<Value, HostError> + Send>;

/// Callbacks served in-process, like the Elixir runner would.
#[derive(Default)]
struct TestHost(HashMap<String, Callback>);

impl TestHost {
    fn with(
        mut self,
        name: &str,
        f: impl FnMut(Vec<Value>) -> Result<Value, HostError> + Send + 'static,
    ) -> Self {
        self.0.insert(name.to_string(), Box::new(f));
        self
    }

    fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

impl Host for TestHost {
    fn call(
        &mut self,
        name: &str,
        args: Vec<Value>,
        timeout: Duration,
    ) -> Result<Value, HostError> {
        let started = Instant::now();
        let result = (self.0.get_mut(name).expect("known callback"))(args);
        if started.elapsed() > timeout {
            Err(HostError::TimedOut)
        } else {
            result
        }
    }
}

fn eval_with(code: &str, limits: Limits, host: TestHost) -> Result<Outcome, Failure> {
    let names = host.names();
    run(
        code.as_bytes(),
        &names,
        limits,
        Box::new(host),
        Arc::new(AtomicBool::new(false)),
    )
}

fn eval(code: &str) -> Result<Outcome, Failure> {
    eval_with(code, Limits::default(), TestHost::default())
}

fn value(code: &str) -> Value {
    match eval(code) {
        Ok(outcome) => outcome.value,
        Err(failure) => panic!("{code}: {failure}"),
    }
}

fn fails(code: &str, limits: Limits, kind: ErrorKind) -> Failure {
    match eval_with(code, limits, TestHost::default()) {
        Ok(outcome) => panic!("{code}: expected {kind:?}, got {:?}", outcome.value),
        Err(failure) => {
            assert_eq!(failure.kind, kind, "{code}: {failure}");
            failure
        }
    }
}

/// Tight limits on everything but the wall clock: a test that expects one of
/// these limits must not lose the race to a deschedule on a loaded machine,
/// so the wall clock is out of reach. Tests about the wall clock set their
/// own `timeout` (and an unreachable instruction budget).
fn small() -> Limits {
    Limits {
        timeout: Duration::from_millis(Limits::MAX_TIMEOUT_MS),
        max_instructions: 1_000_000,
        max_memory: 1024 * 1024,
        max_output: 4096,
        max_callbacks: 5,
        callback_timeout: Duration::from_millis(100),
    }
}

#[test]
fn returns_converted_values() {
    assert_eq!(value("return 1 + 1"), json!(2));
    assert_eq!(value("return 'a', 2, nil"), json!(["a", 2, null]));
    assert_eq!(
        value("local t = {} for i = 1, 3 do t[i] = {n = i} end return t"),
        json!([{"n": 1}, {"n": 2}, {"n": 3}])
    );
    assert_eq!(value("return nil"), json!(null));
}

#[test]
fn instructions_are_counted() {
    let outcome = eval("local s = 0 for i = 1, 1000 do s = s + i end return s").unwrap();
    assert!(
        (1000..1100).contains(&outcome.stats.instructions),
        "{:?}",
        outcome.stats
    );
    assert!(eval("return 1").unwrap().stats.instructions < 10);
}

#[test]
fn print_output_is_captured() {
    let outcome = eval("print('a', 1, nil, true) print({}) return 0").unwrap();
    let mut lines = outcome.output.lines();
    assert_eq!(lines.next(), Some("a\t1\tnil\ttrue"));
    assert!(lines.next().unwrap().starts_with("table: "));
}

#[test]
fn syntax_errors_name_the_line() {
    let failure = fails(
        "local x = 1\nif x then\n  return 1\n",
        Limits::default(),
        ErrorKind::Syntax,
    );
    assert_eq!(failure.line, Some(4));
    assert!(
        failure.message.starts_with("syntax error: "),
        "{}",
        failure.message
    );
    assert!(failure.to_string().starts_with("line 4: syntax error: "));
}

#[test]
fn runtime_errors_name_the_line_without_a_traceback() {
    let failure = fails(
        "local t = nil\n\nreturn t.x",
        Limits::default(),
        ErrorKind::Runtime,
    );
    assert_eq!(failure.line, Some(3));
    assert!(
        !failure.message.contains("traceback"),
        "{}",
        failure.message
    );
    assert!(
        failure.message.contains("attempt to index nil"),
        "{}",
        failure.message
    );

    let failure = fails("error('plain', 0)", Limits::default(), ErrorKind::Runtime);
    assert_eq!((failure.line, failure.message.as_str()), (None, "plain"));

    let failure = fails("\nerror('boom')", Limits::default(), ErrorKind::Runtime);
    assert_eq!(failure.to_string(), "line 2: boom");
}

#[test]
fn a_script_without_return_gets_a_hint() {
    let failure = fails(
        "local x = 1\nprint(x)",
        Limits::default(),
        ErrorKind::NoReturn,
    );
    assert!(failure.message.contains("`return`"), "{}", failure.message);
    assert_eq!(failure.output, "1\n");
}

#[test]
fn endless_loops_hit_the_instruction_limit() {
    let failure = fails(
        "local n = 0\nwhile true do n = n + 1 end",
        small(),
        ErrorKind::InstructionLimit,
    );
    assert_eq!(failure.line, Some(2));
    assert_eq!(failure.stats.instructions, small().max_instructions);
}

#[test]
fn runs_give_their_interrupt_slot_back() {
    let _serial = interrupt::lock_slot_tests();
    // More runs than there are slots, one after the other, some of which
    // break a limit: a slot kept by any of them would run the slots out.
    for i in 0..2 * interrupt::SLOTS {
        if i % 2 == 0 {
            assert_eq!(
                value("local n = 0 for i = 1, 10 do n = n + i end return n"),
                55
            );
        } else {
            fails("while true do end", small(), ErrorKind::InstructionLimit);
        }
    }
    // Runs of other tests running at the same time hold one each; a slot
    // kept by each run here would have taken them all.
    assert!(interrupt::slots_in_use() < interrupt::SLOTS);
}

#[test]
fn runs_without_a_slot_are_counted_the_same() {
    let _serial = interrupt::lock_slot_tests();
    let held = interrupt::hold_free_slots();
    let loop_failure = eval_with(
        "local n = 0\nwhile true do n = n + 1 end",
        small(),
        TestHost::default(),
    );
    let coroutine_failure = eval_with(
        "local co = coroutine.wrap(function() while true do end end)\nco()",
        small(),
        TestHost::default(),
    );
    let sum = eval("local s = 0 for i = 1, 1000 do s = s + i end return s");
    interrupt::release_slots(held);
    let failure = loop_failure.unwrap_err();
    assert_eq!(
        (failure.kind, failure.line),
        (ErrorKind::InstructionLimit, Some(2))
    );
    assert_eq!(failure.stats.instructions, small().max_instructions);
    assert_eq!(
        coroutine_failure.unwrap_err().kind,
        ErrorKind::InstructionLimit
    );
    assert_eq!(sum.unwrap().value, json!(500500));
}

#[test]
fn endless_loops_hit_the_wall_clock() {
    let limits = Limits {
        timeout: Duration::from_millis(50),
        max_instructions: Limits::MAX_INSTRUCTIONS,
        ..small()
    };
    let started = Instant::now();
    fails("while true do end", limits, ErrorKind::Timeout);
    assert!(started.elapsed() < Duration::from_millis(250));
}

#[test]
fn pcall_cannot_swallow_a_limit() {
    fails(
        "local ok = pcall(function() while true do end end)\nreturn 'survived'",
        small(),
        ErrorKind::InstructionLimit,
    );
    fails(
        "for i = 1, 100 do pcall(function() while true do end end) end\nreturn 1",
        small(),
        ErrorKind::InstructionLimit,
    );
}

#[test]
fn memory_bombs_hit_the_memory_limit() {
    fails(
        "local s = string.rep('x', 100 * 1024 * 1024) return #s",
        small(),
        ErrorKind::MemoryLimit,
    );
    fails(
        "local t = {} for i = 1, 1e7 do t[i] = i end return #t",
        Limits {
            max_instructions: Limits::MAX_INSTRUCTIONS,
            ..small()
        },
        ErrorKind::MemoryLimit,
    );
}

#[test]
fn backtracking_patterns_are_interrupted() {
    let limits = Limits {
        timeout: Duration::from_millis(200),
        max_instructions: Limits::MAX_INSTRUCTIONS,
        ..small()
    };
    let started = Instant::now();
    fails(
        "local s = string.rep('a', 3000)\nreturn string.find(s, '.-.-.-.-.-.-.-b')",
        limits,
        ErrorKind::Timeout,
    );
    // Uninterrupted it would run for ages; the margin over the 200 ms limit
    // is for a loaded machine that deschedules the thread.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn print_is_bounded() {
    let failure = fails(
        "for i = 1, 1e6 do print('xxxxxxxx') end",
        small(),
        ErrorKind::OutputLimit,
    );
    assert!(failure.output.len() <= small().max_output);
}

#[test]
fn results_are_bounded() {
    fails(
        "return string.rep('x', 5000)",
        small(),
        ErrorKind::OutputLimit,
    );
    let failure = fails(
        "local t = {} t[1] = t return t",
        Limits::default(),
        ErrorKind::OutputLimit,
    );
    assert!(
        failure.message.contains("nested deeper"),
        "{}",
        failure.message
    );
}

#[test]
fn callbacks_receive_arguments_and_return_values() {
    let host = TestHost::default()
        .with("beam.top", |args| Ok(json!({"args": args, "list": [1, 2]})))
        .with("ping", |_| Ok(json!("pong")));
    let outcome = eval_with(
        "local r = beam.top(10, 'memory', {a = 1})\nreturn {r.args, #r.list, ping()}",
        Limits::default(),
        host,
    )
    .unwrap();
    assert_eq!(outcome.value, json!([[10, "memory", {"a": 1}], 2, "pong"]));
    assert_eq!(outcome.stats.callbacks, 2);
}

#[test]
fn callback_failures_end_the_run_unless_caught() {
    let host =
        || TestHost::default().with("boom", |_| Err(HostError::Failed("no such table".into())));
    let failure = eval_with("local x = 1\nreturn boom()", Limits::default(), host()).unwrap_err();
    assert_eq!(failure.kind, ErrorKind::CallbackError);
    assert_eq!(
        failure.to_string(),
        "line 2: callback boom failed: no such table"
    );

    let outcome = eval_with(
        "local ok, err = pcall(boom)\nreturn {ok, tostring(err)}",
        Limits::default(),
        host(),
    )
    .unwrap();
    assert_eq!(
        outcome.value,
        json!([false, "callback boom failed: no such table"])
    );
}

#[test]
fn slow_callbacks_time_out() {
    let host = TestHost::default().with("slow", |_| {
        std::thread::sleep(Duration::from_millis(150));
        Ok(json!(1))
    });
    let failure = eval_with("return slow()", small(), host).unwrap_err();
    assert_eq!(failure.kind, ErrorKind::CallbackTimeout);
    assert!(
        failure.message.contains("did not answer within 100 ms"),
        "{}",
        failure.message
    );
}

#[test]
fn callback_calls_are_limited() {
    let host = TestHost::default().with("tick", |_| Ok(json!(1)));
    let failure = eval_with(
        "local n = 0\nfor i = 1, 100 do n = n + tick() end\nreturn n",
        small(),
        host,
    )
    .unwrap_err();
    assert_eq!(failure.kind, ErrorKind::CallbackLimit);
    assert_eq!(failure.line, Some(2));
    assert_eq!(failure.stats.callbacks, 5);
}

#[test]
fn a_gone_host_cancels_the_run() {
    let host = TestHost::default().with("gone", |_| Err(HostError::Gone));
    let failure = eval_with("pcall(gone)\nreturn 1", small(), host).unwrap_err();
    assert_eq!(failure.kind, ErrorKind::Cancelled);
}

#[test]
fn cancel_flag_stops_a_running_script() {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        flag.store(true, Ordering::Relaxed);
    });
    let limits = Limits {
        max_instructions: Limits::MAX_INSTRUCTIONS,
        ..Limits::default()
    };
    let started = Instant::now();
    let failure = run(
        b"while true do end",
        &[],
        limits,
        Box::new(TestHost::default()),
        cancel,
    )
    .unwrap_err();
    stopper.join().unwrap();
    assert_eq!(failure.kind, ErrorKind::Cancelled);
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[test]
fn bytecode_is_never_loaded() {
    // A Luau bytecode header (version byte) followed by junk must be
    // compiled as text, and fail as a syntax error.
    let failure = run(
        b"\x06\x03\x00\x01junk",
        &[],
        Limits::default(),
        Box::new(TestHost::default()),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap_err();
    assert_eq!(failure.kind, ErrorKind::Syntax);
}

#[test]
fn nothing_leaks_between_runs() {
    value("leaked = 1 return 0");
    assert_eq!(value("return leaked"), json!(null));
}

#[test]
fn callback_names_are_checked() {
    let ok = |names: &[&str]| {
        check_callback_names(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    };
    assert!(ok(&["beam.top_processes", "ets.tables", "top"]).is_ok());
    assert!(ok(&["string.evil"]).unwrap_err().contains("shadow"));
    assert!(ok(&["a", "a.b"]).unwrap_err().contains("namespace"));
    assert!(ok(&["a..b"]).is_err());
    assert!(ok(&["end.x"]).is_err());
    assert!(ok(&["1a"]).is_err());
}

#[test]
fn locations_are_split() {
    assert_eq!(split_location("script:12: oops"), (Some(12), "oops"));
    assert_eq!(split_location("oops"), (None, "oops"));
    assert_eq!(strip_traceback("x\nstack traceback:\n  here"), "x");
}

/// Limits for the native-path tests: a generous instruction budget, so that
/// the wall clock or the memory limit is what must stop the script.
fn hostile() -> Limits {
    Limits {
        timeout: Duration::from_millis(300),
        max_instructions: Limits::MAX_INSTRUCTIONS,
        max_memory: 16 * 1024 * 1024,
        ..small()
    }
}

/// Fails with `kind` well within `bound` of wall time.
fn fails_within(code: &str, limits: Limits, kind: ErrorKind, bound: Duration) -> Failure {
    let started = Instant::now();
    let failure = fails(code, limits, kind);
    assert!(
        started.elapsed() < bound,
        "{code}: took {:?}",
        started.elapsed()
    );
    failure
}

#[test]
fn print_refuses_a_huge_line_before_building_it() {
    // 6,000 references to one 7 MiB string of invalid UTF-8: the line would
    // be 120 GB once converted.
    fails_within(
        "local s = string.rep('\\255', 7 * 1024 * 1024) local t = {} \
         for i = 1, 6000 do t[i] = s end print(unpack(t)) return 1",
        Limits {
            max_memory: 64 * 1024 * 1024,
            ..hostile()
        },
        ErrorKind::OutputLimit,
        Duration::from_secs(2),
    );
    // Output that fits is kept, byte for byte once converted.
    let outcome = eval("print('a', 1, nil) return 1").unwrap();
    assert_eq!(outcome.output, "a\t1\tnil\n");
}

#[test]
fn callback_arguments_are_bounded_in_total() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let host = TestHost::default().with("cb.take", move |_| {
        seen.fetch_add(1, Ordering::Relaxed);
        Ok(json!(1))
    });
    // 3,000 arguments of 1 KB each: each is far below max_output (4 KB),
    // together they are 3 MB.
    let failure = eval_with(
        "local s = string.rep('x', 1000) local t = {} for i = 1, 3000 do t[i] = s end \
         return cb.take(unpack(t))",
        hostile(),
        host,
    )
    .unwrap_err();
    assert_eq!(failure.kind, ErrorKind::CallbackError);
    assert!(failure.message.contains("in total"), "{failure}");
    assert_eq!(calls.load(Ordering::Relaxed), 0);
}

#[test]
fn results_are_bounded_after_json_escaping() {
    // 3,000 control characters are 18,000 bytes of JSON.
    fails(
        "return string.rep('\\1', 3000)",
        Limits {
            max_output: 10_000,
            ..small()
        },
        ErrorKind::OutputLimit,
    );
}

#[test]
fn error_messages_are_cut() {
    let failure = fails(
        "error(string.rep('\\255', 8 * 1024 * 1024))",
        Limits {
            max_memory: 32 * 1024 * 1024,
            ..small()
        },
        ErrorKind::Runtime,
    );
    assert!(
        failure.message.len() < MAX_MESSAGE + 100,
        "{}",
        failure.message.len()
    );
    assert!(failure.message.ends_with("(message truncated)"));
    // A short message keeps its line.
    let failure = fails("local x = 1\nerror('boom')", small(), ErrorKind::Runtime);
    assert_eq!((failure.line, failure.message.as_str()), (Some(2), "boom"));
}

#[test]
fn table_move_of_a_huge_range_is_bounded() {
    fails_within(
        "table.move({}, 1, 2147483646, 2, {}) while true do end",
        hostile(),
        ErrorKind::Timeout,
        Duration::from_secs(2),
    );
}

#[test]
fn plain_find_and_split_are_linear() {
    let started = Instant::now();
    // Quadratic with Luau's `lmemfind` or its `split`: 2 MB x 1 MB.
    let outcome = eval_with(
        "local s = string.rep('a', 2000000) local p = string.rep('a', 1000000) .. 'b' \
         return {string.find(s, p), string.find(s, p, 1, true), #s:split(p)}",
        // Quadratic would be hours; linear is milliseconds (more in debug).
        Limits {
            timeout: Duration::from_secs(5),
            ..hostile()
        },
        TestHost::default(),
    )
    .unwrap();
    // Neither find matches (nil, nil); split gives one piece.
    assert_eq!(outcome.value, json!({"3": 1}));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn sorting_without_a_comparator_is_interrupted() {
    // Without a comparator, Luau sorts in C, out of the interrupt's reach.
    fails_within(
        "local t = table.create(2000000, 1) for i = 1, #t, 7 do t[i] = i end \
         table.sort(t) return 1",
        Limits {
            timeout: Duration::from_millis(100),
            max_memory: 64 * 1024 * 1024,
            ..hostile()
        },
        ErrorKind::Timeout,
        Duration::from_secs(2),
    );
}

#[test]
fn expensive_pattern_steps_meet_the_deadline() {
    // `%b` scans the rest of the string at every start position: with an
    // opening parenthesis at each one, that is quadratic (about 5e11 steps),
    // so no machine finishes it before the deadline.
    fails_within(
        "local s = string.rep('(', 1024 * 1024) return string.find(s, '%b()')",
        Limits {
            max_memory: 64 * 1024 * 1024,
            ..hostile()
        },
        ErrorKind::Timeout,
        Duration::from_secs(2),
    );
}

#[test]
fn reused_states_share_nothing_between_runs() {
    // Enough sequential runs that pooled states are reused.
    for i in 0..20 {
        let host = TestHost::default().with("ns.cb", |_| Ok(json!(1)));
        let code = format!(
            "assert(leaked == nil and x == nil, 'leaked') leaked = {i} \
             assert(getmetatable(_G) == nil or true) \
             local ok = pcall(function() ns.cb = nil end) assert(not ok, 'namespace writable') \
             return ns.cb()"
        );
        let outcome = eval_with(&code, Limits::default(), host).unwrap();
        assert_eq!(outcome.value, json!(1));
        // The next run has no callbacks: the namespace is gone.
        assert_eq!(value("return type(ns)"), json!("nil"));
        // A run that breaks a limit does not hand on its state either.
        fails(
            "x = 1 while true do end",
            small(),
            ErrorKind::InstructionLimit,
        );
    }
    // The random generator is reseeded for every run.
    let first = value("math.randomseed(7) return math.random(1, 1000000)");
    let again = value("return math.random(1, 1000000)");
    let seeded = value("math.randomseed(7) return math.random(1, 1000000)");
    assert_eq!(first, seeded);
    // Had the seed survived, this would be the seeded sequence's second value.
    let second = value("math.randomseed(7) math.random(1, 1000000) return math.random(1, 1000000)");
    assert_ne!(again, second);
}

/// Where a tight loop's time goes: `cargo test --release --lib loop_cost
/// -- --ignored --nocapture`.
#[test]
#[ignore]
fn loop_cost() {
    let code = "local s = 0 for i = 1, 10000000 do s = s + i end return s";
    let plain = mlua::Lua::new();
    let started = Instant::now();
    let _: f64 = plain.load(code).eval().unwrap();
    let bare = started.elapsed();
    plain.set_interrupt(|_| Ok(mlua::VmState::Continue));
    let started = Instant::now();
    let _: f64 = plain.load(code).eval().unwrap();
    let mlua_interrupt = started.elapsed();
    let limits = Limits {
        max_instructions: Limits::MAX_INSTRUCTIONS,
        timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let started = Instant::now();
    eval_with(code, limits, TestHost::default()).unwrap();
    let sandbox = started.elapsed();
    println!(
        "10M iterations: bare {bare:?}, mlua interrupt {mlua_interrupt:?}, sandbox {sandbox:?}"
    );
}
