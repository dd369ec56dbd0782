use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;

/// How a script ran through [`drive`].
struct Driven {
    result: Result<Outcome, Failure>,
    /// The inline run finished it (not abandoned to a thread).
    inline: bool,
    /// Slices that ended with `Continue`.
    yields: u32,
    /// Longest single slice, in CPU time of the thread (a loaded machine
    /// stalls threads for tens of milliseconds; that is not the slice's).
    longest: Duration,
    /// Callback calls served, over both attempts.
    calls: u32,
}

/// Runs `code` as `Beamlens.Lua.eval/3` does: inline, and on a thread
/// from the start if the inline run is abandoned. Every callback answers
/// its first argument (`cb.value`).
fn drive(code: &str, limits: Limits) -> Driven {
    let names = vec!["cb.value".to_string()];
    let mut driven = Driven {
        result: Err(Failure {
            kind: ErrorKind::Runtime,
            message: String::new(),
            line: None,
            output: String::new(),
            stats: Stats::default(),
        }),
        inline: false,
        yields: 0,
        longest: Duration::ZERO,
        calls: 0,
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let started = thread_cpu();
    match InlineRun::new(code.as_bytes(), &names, limits, cancel.clone()) {
        None => {}
        Some(Err(failure)) => {
            driven.result = Err(failure);
            driven.inline = true;
            driven.longest = thread_cpu() - started;
            return driven;
        }
        Some(Ok(mut run)) => {
            driven.longest = thread_cpu() - started;
            let mut input = Input::Go;
            loop {
                let slice = thread_cpu();
                let step = run.step(input);
                driven.longest = driven.longest.max(thread_cpu() - slice);
                input = match step {
                    Step::Callback { args, .. } => {
                        driven.calls += 1;
                        Input::Answer(Ok(args.into_iter().next().unwrap_or(Value::Null)))
                    }
                    Step::Continue => {
                        driven.yields += 1;
                        Input::Go
                    }
                    Step::Done(result) => {
                        driven.result = *result;
                        driven.inline = true;
                        return driven;
                    }
                    Step::Abandon => break,
                };
            }
        }
    }
    struct Echo(Arc<std::sync::atomic::AtomicU32>);
    impl Host for Echo {
        fn call(&mut self, _: &str, args: Vec<Value>, _: Duration) -> Result<Value, HostError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(args.into_iter().next().unwrap_or(Value::Null))
        }
    }
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    driven.result = run(
        code.as_bytes(),
        &names,
        limits,
        Box::new(Echo(calls.clone())),
        cancel,
    );
    driven.calls += calls.load(std::sync::atomic::Ordering::Relaxed);
    driven
}

/// CPU time of the calling thread (Linux's scheduler statistics).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let nanos = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(nanos)
}

fn ok(driven: &Driven) -> &Value {
    match &driven.result {
        Ok(outcome) => &outcome.value,
        Err(failure) => panic!("expected a value, got {failure}"),
    }
}

/// Longest CPU time of a slice: the hard cap (1 ms) plus one budget
/// check's worth of steps, with a wide margin for debug builds and a
/// loaded machine's cache misses.
const SLICE_BOUND: Duration = Duration::from_millis(10);

#[test]
fn small_scripts_run_inline() {
    let driven = drive("return 1", Limits::default());
    assert!(driven.inline);
    assert_eq!(ok(&driven), &json!(1));

    let driven = drive(
        "local n = 0 for i = 1, 100 do n = n + cb.value(i) end return n",
        Limits::default(),
    );
    assert!(driven.inline);
    assert_eq!(ok(&driven), &json!(5050));
    assert_eq!(driven.calls, 100);
    let stats = driven.result.as_ref().unwrap().stats;
    assert_eq!(stats.callbacks, 100);
}

#[test]
fn long_loops_yield_in_slices() {
    for code in [
        "local s = 0 for i = 1, 3000000 do s = s + i end return s",
        // A script's own pcall does not stop the slices.
        "local s = 0 pcall(function() for i = 1, 3000000 do s = s + i end end) return s",
    ] {
        let driven = drive(code, Limits::default());
        assert!(driven.inline, "{code}");
        assert_eq!(ok(&driven), &json!(4_500_001_500_000u64), "{code}");
        assert!(driven.yields > 0, "{code}: never yielded");
        assert!(driven.longest < SLICE_BOUND, "{code}: {:?}", driven.longest);
    }
}

#[test]
fn what_cannot_yield_is_abandoned_to_a_thread() {
    let limits = Limits {
        timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let cases: &[(&str, Result<Value, ErrorKind>)] = &[
        // A sort whose comparator never returns.
        (
            "local t = {3, 2, 1} table.sort(t, function(a, b) while true do end end) return 1",
            Err(ErrorKind::InstructionLimit),
        ),
        // A metamethod that loops.
        (
            "local t = setmetatable({}, {__index = function() while true do end end}) \
             return t.x",
            Err(ErrorKind::InstructionLimit),
        ),
        // A search over a string too large to scan inline.
        (
            "return (string.rep('x', 3000000) .. 'y'):find('x*y')",
            Ok(json!([1, 3_000_001])),
        ),
        // A callback where the wrapper cannot yield: in a comparator, in
        // a coroutine of the script's own.
        (
            "local t = {3, 1, 2} table.sort(t, function(a, b) return cb.value(a) < b end) \
             return t",
            Ok(json!([1, 2, 3])),
        ),
        (
            "return coroutine.wrap(function() return cb.value(7) end)()",
            Ok(json!(7)),
        ),
        // A yield of the script's own at top level.
        ("coroutine.yield(1) return 1", Err(ErrorKind::Runtime)),
    ];
    for (code, expected) in cases {
        let driven = drive(code, limits);
        assert!(!driven.inline, "{code}: not abandoned");
        assert!(driven.longest < SLICE_BOUND, "{code}: {:?}", driven.longest);
        match (&driven.result, expected) {
            (Ok(outcome), Ok(value)) => assert_eq!(&outcome.value, value, "{code}"),
            (Err(failure), Err(kind)) if [*kind, ErrorKind::Timeout].contains(&failure.kind) => {}
            (other, _) => panic!("{code}: {other:?}"),
        }
    }
}

#[test]
fn inline_results_match_threaded_ones() {
    let cases = [
        "return {a = 1, b = {2, 3}}",
        "print('hi') return 1, 2",
        "local x = nil\nreturn x.count",
        "return 1 +",
        "error('boom')",
        "x = 1",
        "return ('a,b'):split(',')",
        "return string.rep('ab', 3, '-')",
        "return string.format('%d-%s', 1, 'x')",
        "return table.concat({1, 2, 3}, ',')",
        "return ('hello'):find('l')",
        "local ok, e = pcall(string.rep) return e",
        "local ok, e = pcall(cb.value, function() end) return {ok, e}",
        "return {pcall(cb.value, 3)}",
        "local function f() return pcall(f) end return select('#', f())",
        "local function f() return xpcall(f, print) end return select('#', f())",
        "return string.rep()",
        "local n = 0 for i = 1, 10 do n = n + cb.value(i) end return n",
        "while true do end",
        "local t = {} for i = 1, 1e7 do t[i] = i end",
        "for i = 1, 10 do cb.value(i) end return 1",
        // Arguments over `max_output` in total: the wrapper's direct yield
        // gives way to the dispatcher, which reports them.
        "return {pcall(cb.value, string.rep('x', 300), string.rep('y', 300))}",
        "local ok, e = pcall(cb.value, 1, 2, 3) return {ok, e, cb.value('after')}",
    ];
    let limits = Limits {
        max_callbacks: 5,
        max_instructions: 1_000_000,
        max_memory: 1024 * 1024,
        max_output: 512,
        ..Limits::default()
    };
    for code in cases {
        let inline = drive(code, limits);
        assert!(inline.inline, "{code}: abandoned");
        let threaded = run(
            code.as_bytes(),
            &["cb.value".to_string()],
            limits,
            Box::new(EchoHost),
            Arc::new(AtomicBool::new(false)),
        );
        match (&inline.result, &threaded) {
            (Ok(a), Ok(b)) => {
                assert_eq!((&a.value, &a.output), (&b.value, &b.output), "{code}")
            }
            (Err(a), Err(b)) => assert_eq!(
                (a.kind, &a.message, a.line, &a.output),
                (b.kind, &b.message, b.line, &b.output),
                "{code}"
            ),
            (a, b) => panic!("{code}: inline {a:?}, threaded {b:?}"),
        }
    }
}

struct EchoHost;

impl Host for EchoHost {
    fn call(&mut self, _: &str, args: Vec<Value>, _: Duration) -> Result<Value, HostError> {
        Ok(args.into_iter().next().unwrap_or(Value::Null))
    }
}

#[test]
fn inline_runs_give_their_interrupt_slot_back() {
    let _serial = interrupt::lock_slot_tests();
    let limits = Limits {
        max_instructions: 10_000,
        ..Limits::default()
    };
    let scripts = [
        // Finished, broke a limit, abandoned to the threaded path.
        "return cb.value(1)",
        "while true do end",
        "local t = setmetatable({}, {__index = function() while true do end end}) return t.x",
    ];
    for i in 0..2 * interrupt::SLOTS {
        drive(scripts[i % scripts.len()], limits);
    }
    // Runs of other tests running at the same time hold one each; a slot
    // kept by each run here would have taken them all.
    assert!(interrupt::slots_in_use() < interrupt::SLOTS);
}

#[test]
fn library_errors_point_at_the_script_line() {
    let driven = drive("local x = 1\nreturn string.rep()", Limits::default());
    let failure = driven.result.unwrap_err();
    assert_eq!(failure.line, Some(2), "{failure}");
    assert!(failure.message.contains("rep"), "{failure}");
}

#[test]
fn large_or_unbounded_runs_take_the_thread() {
    let big = Limits {
        max_memory: 64 * 1024 * 1024,
        ..Limits::default()
    };
    assert!(InlineRun::new(b"return 1", &[], big, Arc::new(AtomicBool::new(false))).is_none());
    let code = format!("return 1 {}", " ".repeat(MAX_CODE));
    let driven = drive(&code, Limits::default());
    assert!(!driven.inline);
    assert_eq!(ok(&driven), &json!(1));
}

/// Where an inline run's time goes: `cargo test --release --lib
/// inline_cost -- --ignored --nocapture`.
#[test]
#[ignore]
fn inline_cost() {
    let time = |label: &str, code: &str, names: &[String], n: u32| {
        let started = std::time::Instant::now();
        for _ in 0..n {
            let mut run = InlineRun::new(code.as_bytes(), names, Limits::default(), Arc::default())
                .unwrap()
                .unwrap();
            let mut input = Input::Go;
            loop {
                input = match run.step(input) {
                    Step::Callback { args, .. } => Input::Answer(Ok(args[0].clone())),
                    Step::Continue => Input::Go,
                    Step::Done(result) => {
                        assert!(result.is_ok());
                        break;
                    }
                    Step::Abandon => panic!("abandoned"),
                };
            }
        }
        eprintln!("{label}: {:?} per run", started.elapsed() / n);
    };
    let cb = ["cb.value".to_string()];
    for _ in 0..2 {
        time("return 1, no callbacks", "return 1", &[], 2000);
        time("return 1, one callback name", "return 1", &cb, 2000);
        time(
            "100 callbacks",
            "local n = 0 for i = 1, 100 do n = n + cb.value(i) end return n",
            &cb,
            200,
        );
        time(
            "sum 1..100000",
            "local s = 0 for i = 1, 100000 do s = s + i end return s",
            &[],
            20,
        );
    }
}
