//! The Lua state a script runs in: which standard functions it can reach.
//!
//! Reachable: the base functions that only compute (`assert`, `error`,
//! `ipairs`, `pairs`, `next`, `pcall`, `xpcall`, `select`, `tonumber`,
//! `tostring`, `type`, `typeof`, `unpack`, `rawget`/`rawset`/`rawequal`/
//! `rawlen`, `getmetatable`/`setmetatable`, `newproxy`, `gcinfo`), the
//! libraries `string`, `table`, `math`, `utf8`, `bit32`, `buffer`, `vector`,
//! `coroutine`, `os.clock` and `os.time`, `collectgarbage("count")`, and a
//! `print` that captures its output.
//!
//! Not reachable: `io` and `debug` (never loaded), the rest of `os`,
//! `require`, `loadstring`, `getfenv`/`setfenv` (removed), bytecode loading
//! (chunks are always compiled from text), `collectgarbage` modes other than
//! `count` (refused in sandbox mode), and writes to any shared table: Luau's
//! sandbox mode makes the globals, every library table and the string
//! metatable read-only, and gives the script its own global table whose
//! reads fall through to the shared one.
//!
//! # Native functions that could outrun the limits
//!
//! Luau's interrupt never runs inside a C library function, and the memory
//! limit only bounds what a function allocates, not how long it loops. The
//! library functions that could loop for long without allocating are
//! replaced or wrapped here:
//!
//! * `string.find` with a plain pattern (the 4th argument, or a pattern
//!   without special characters) used a quadratic search
//!   (`lmemfind`); it is done here with `memchr::memmem` (linear).
//! * `string.split` compared the separator at every position (quadratic);
//!   it is reimplemented with `memmem`, and its pieces count against the
//!   memory limit as they are created.
//! * `table.sort` without a comparator compared with the VM's `<` in C
//!   (no interrupt, and each string comparison can read megabytes); it now
//!   always sorts with a Lua comparator, so every comparison is an
//!   interrupt point.
//! * `table.move` looped over the whole requested range (2^31 steps for an
//!   empty table); Luau's `LuauTableMoveTimeoutFix` flag, switched on
//!   here, bounds it by the tables' sizes.
//!
//! Pattern matching (`find`, `match`, `gmatch`, `gsub`) calls the interrupt
//! at every matcher step, and the interrupt reads the run's deadline flag every
//! few steps (see `interrupt.rs`); the other functions are bounded by the
//! memory limit (`rep`, `format`, `concat`, `create`, buffers) or by Luau's
//! stack limit of 8,000 values (`unpack`, `byte`, `select`).

use std::sync::Once;

use mlua::{Function, IntoLuaMulti, Lua, LuaOptions, MultiValue, StdLib, Table, Value};

/// Globals removed after the libraries are loaded. `load`, `dofile` and
/// `loadfile` do not exist in Luau; they are listed so that a future switch
/// of interpreter cannot bring them back unnoticed.
pub const REMOVED_GLOBALS: &[&str] = &[
    "require",
    "loadstring",
    "load",
    "dofile",
    "loadfile",
    "getfenv",
    "setfenv",
    "debug",
    "io",
    "package",
];

/// A fresh Lua state with only the safe libraries, not yet sandboxed (the
/// caller installs `print` and the callbacks first, then calls
/// [`seal`]).
pub fn new_state() -> mlua::Result<Lua> {
    let libs = StdLib::COROUTINE
        | StdLib::TABLE
        | StdLib::OS
        | StdLib::STRING
        | StdLib::UTF8
        | StdLib::BIT
        | StdLib::MATH
        | StdLib::BUFFER
        | StdLib::VECTOR;
    let lua = Lua::new_with(libs, LuaOptions::new())?;

    let globals = lua.globals();
    // Luau's own `pcall` and `xpcall` can be yielded across: the inline
    // path (`inline.rs`) suspends a run inside them (its slices, and
    // callbacks called under a script's `pcall`). Scripts get them behind
    // a nesting bound (see [`PCALL`]); the run's trampoline uses `xpcall`
    // directly.
    let xpcall: Function = globals.raw_get("xpcall")?;
    lua.set_named_registry_value(NATIVE_XPCALL, &xpcall)?;
    let (pcall, bounded_xpcall, reset): (Function, Function, Function) =
        lua.load(PCALL).set_name(WRAPPERS_CHUNK).call((
            globals.raw_get::<Function>("pcall")?,
            xpcall,
            globals.raw_get::<Function>("error")?,
            MAX_PCALL_DEPTH,
        ))?;
    globals.raw_set("pcall", pcall)?;
    globals.raw_set("xpcall", bounded_xpcall)?;
    lua.set_named_registry_value(PCALL_RESET, reset)?;
    for name in REMOVED_GLOBALS {
        globals.raw_set(*name, mlua::Nil)?;
    }

    replace_unbounded(&lua, &globals)?;

    // `os` keeps its clocks only.
    let os: Table = globals.raw_get("os")?;
    let clocks = lua.create_table()?;
    clocks.raw_set("clock", os.raw_get::<mlua::Function>("clock")?)?;
    clocks.raw_set("time", os.raw_get::<mlua::Function>("time")?)?;
    globals.raw_set("os", clocks)?;

    Ok(lua)
}

/// Registry name of Luau's own `xpcall` (see [`new_state`]).
pub const NATIVE_XPCALL: &str = "beamlens.native_xpcall";

/// Registry name of the function that resets the `pcall` nesting count
/// (called at the start of every run).
pub const PCALL_RESET: &str = "beamlens.pcall_reset";

/// `pcall` and `xpcall` for scripts: Luau's own, at most [`MAX_PCALL_DEPTH`]
/// deep. Luau's C-call limit (200) does not bound them inside a coroutine,
/// where a recursion through `pcall` would pile up 10,000 frames whose
/// results are copied at each return (quadratic, in C, for ~0.5 s). Past
/// the bound they raise "stack overflow", as Luau does past its C-call
/// limit.
const PCALL: &str = r#"
local pcall, xpcall, error, MAX = ...
local depth = 0
local function done(...)
    depth -= 1
    return ...
end
local function bounded_pcall(...)
    if depth >= MAX then
        error("stack overflow", 2)
    end
    depth += 1
    return done(pcall(...))
end
local function bounded_xpcall(...)
    if depth >= MAX then
        error("stack overflow", 2)
    end
    depth += 1
    return done(xpcall(...))
end
return bounded_pcall, bounded_xpcall, function()
    depth = 0
end
"#;

/// See [`PCALL`].
pub const MAX_PCALL_DEPTH: u32 = 190;

/// Characters that make a pattern more than a plain string (Luau's
/// `SPECIALS`).
const SPECIALS: &[u8] = b"^$*+?.([%-";

/// Wraps `table.sort`: sorts with a Lua comparator when none is given.
const SORT: &str = r#"
local sort = ...
local function less(a, b)
    return a < b
end
return function(t, comp)
    if comp == nil then
        return sort(t, less)
    end
    return sort(t, comp)
end
"#;

fn replace_unbounded(lua: &Lua, globals: &Table) -> mlua::Result<()> {
    static FLAGS: Once = Once::new();
    FLAGS.call_once(|| {
        // A global Luau setting: `table.move` bounded by the tables' sizes.
        let _ = Lua::set_fflag("LuauTableMoveTimeoutFix", true);
    });

    let string: Table = globals.raw_get("string")?;
    let find: Function = string.raw_get("find")?;
    string.raw_set(
        "find",
        lua.create_function(move |lua, args: MultiValue| plain_find(lua, &find, args))?,
    )?;
    string.raw_set("split", lua.create_function(split)?)?;

    let table: Table = globals.raw_get("table")?;
    let sort: Function = lua
        .load(SORT)
        .set_name(WRAPPERS_CHUNK)
        .call(table.raw_get::<Function>("sort")?)?;
    table.raw_set("sort", sort)?;

    let utf8: Table = globals.raw_get("utf8")?;
    let abandon =
        lua.create_function(|lua, size: usize| super::inline::check_size(lua, size, 0))?;
    lua.load(SIZE_GUARDS).set_name(WRAPPERS_CHUNK).call::<()>((
        string,
        table,
        utf8,
        abandon,
        super::inline::MAX_SCAN,
        super::inline::MAX_ITEMS,
        super::inline::MAX_BUILD,
        globals.raw_get::<Function>("type")?,
        globals.raw_get::<Function>("rawlen")?,
        globals.raw_get::<Function>("select")?,
    ))
}

/// The chunk name of the library wrappers written in Lua. An error raised
/// by a library function they call points at them; the run moves it to
/// the script line that made the call (see `relocate` in `mod.rs`).
pub const WRAPPERS_CHUNK: &str = "=wrap";

/// Size guards for the inline path (`inline.rs`): before a C library
/// function that could work for long without reaching the interrupt, an
/// input larger than the inline path's bounds abandons the inline run
/// (the script then runs again on a thread, where the same call is
/// bounded by the run's deadline). On the threaded path `abandon` does
/// nothing.
const SIZE_GUARDS: &str = r##"
local string, table, utf8, abandon, MAX_SCAN, MAX_ITEMS, MAX_BUILD, type, rawlen, select = ...
local function len(v)
    if type(v) == "string" then
        return #v
    end
    return 0
end
-- Pattern functions: the subject, the pattern and the replacement.
for _, name in {"find", "match", "gmatch", "gsub", "split"} do
    local f = string[name]
    string[name] = function(s, p, r, ...)
        local n = len(s) + len(p) + len(r)
        if n > MAX_SCAN then
            abandon(n)
        end
        return f(s, p, r, ...)
    end
end
-- Functions that copy or scan their whole input once.
for _, name in {"upper", "lower", "reverse"} do
    local f = string[name]
    string[name] = function(s, ...)
        if len(s) > MAX_BUILD then
            abandon(len(s))
        end
        return f(s, ...)
    end
end
local utf8len = utf8.len
utf8.len = function(s, ...)
    if len(s) > MAX_BUILD then
        abandon(len(s))
    end
    return utf8len(s, ...)
end
local rep = string.rep
string.rep = function(s, n, sep, ...)
    if type(n) == "number" and n > 0 and (len(s) + len(sep)) * n > MAX_BUILD then
        abandon(MAX_BUILD + 1)
    end
    return rep(s, n, sep, ...)
end
local format = string.format
string.format = function(fmt, ...)
    local n = len(fmt)
    for i = 1, select("#", ...) do
        n += len((select(i, ...)))
    end
    if n > MAX_BUILD then
        abandon(n)
    end
    return format(fmt, ...)
end
local concat = table.concat
table.concat = function(t, sep, i, j, ...)
    if type(t) == "table" then
        local n = rawlen(t)
        if type(i) == "number" and type(j) == "number" and j - i + 1 > n then
            n = j - i + 1
        end
        if n > MAX_ITEMS or len(sep) > MAX_SCAN then
            abandon(n)
        end
    end
    return concat(t, sep, i, j, ...)
end
"##;

/// `string.find`: plain searches in linear time, the rest by Luau.
fn plain_find(lua: &Lua, find: &Function, args: MultiValue) -> mlua::Result<MultiValue> {
    let (Some(Value::String(s)), Some(Value::String(p))) = (args.front(), args.get(1)) else {
        return find.call(args);
    };
    let pattern = p.as_bytes();
    let plain = args
        .get(3)
        .is_some_and(|v| !matches!(v, Value::Nil | Value::Boolean(false)));
    if !plain && pattern.iter().any(|b| SPECIALS.contains(b)) {
        return find.call(args);
    }
    let haystack = s.as_bytes();
    let len = haystack.len() as i64;
    let init = match args.get(2) {
        None | Some(Value::Nil) => 1,
        Some(Value::Integer(i)) => *i,
        Some(Value::Number(n)) if n.is_finite() => *n as i64,
        Some(Value::String(text)) => match text
            .to_str()
            .ok()
            .and_then(|t| t.trim().parse::<f64>().ok())
        {
            Some(n) if n.is_finite() => n as i64,
            _ => {
                return Err(mlua::Error::runtime(
                    "invalid argument #3 to 'find' (number expected, got string)",
                ))
            }
        },
        Some(other) => {
            return Err(mlua::Error::runtime(format!(
                "invalid argument #3 to 'find' (number expected, got {})",
                other.type_name()
            )))
        }
    };
    // Luau's `posrelat`, then the same clamping as `str_find_aux`.
    let init = if init < 0 {
        (init + len + 1).max(0)
    } else {
        init
    };
    let init = init.max(1);
    if init > len + 1 {
        return Value::Nil.into_lua_multi(lua);
    }
    let start = (init - 1) as usize;
    match memchr::memmem::find(&haystack[start..], &pattern) {
        Some(at) => {
            let first = (start + at + 1) as i64;
            (first, first + pattern.len() as i64 - 1).into_lua_multi(lua)
        }
        None => Value::Nil.into_lua_multi(lua),
    }
}

/// `string.split(s, sep)`, as Luau defines it (`sep` defaults to `","`; an
/// empty separator splits into bytes), in linear time.
fn split(lua: &Lua, (s, sep): (mlua::LuaString, Option<mlua::LuaString>)) -> mlua::Result<Table> {
    let haystack = s.as_bytes();
    let sep_bytes = sep.as_ref().map(|sep| sep.as_bytes());
    let needle: &[u8] = sep_bytes.as_deref().unwrap_or(b",");
    let table = lua.create_table()?;
    let mut n = 0;
    if needle.is_empty() {
        for i in 0..haystack.len() {
            n += 1;
            table.raw_set(n, lua.create_string(&haystack[i..=i])?)?;
        }
        return Ok(table);
    }
    let mut span_start = 0;
    for at in memchr::memmem::find_iter(&haystack, needle) {
        n += 1;
        table.raw_set(n, lua.create_string(&haystack[span_start..at])?)?;
        span_start = at + needle.len();
    }
    table.raw_set(n + 1, lua.create_string(&haystack[span_start..])?)?;
    Ok(table)
}

/// Makes every shared table read-only and gives scripts a private global
/// table. Call after all globals are installed.
pub fn seal(lua: &Lua) -> mlua::Result<()> {
    lua.sandbox(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed() -> Lua {
        let lua = new_state().unwrap();
        seal(&lua).unwrap();
        lua
    }

    #[test]
    fn dangerous_globals_are_gone() {
        let lua = sealed();
        for name in REMOVED_GLOBALS {
            let t: String = lua.load(format!("return type({name})")).eval().unwrap();
            assert_eq!(t, "nil", "{name} is still reachable");
        }
        let os: Vec<String> = lua
            .load("local k = {} for name in pairs(os) do table.insert(k, name) end table.sort(k) return k")
            .eval()
            .unwrap();
        assert_eq!(os, ["clock", "time"]);
    }

    #[test]
    fn shared_tables_are_read_only() {
        let lua = sealed();
        for code in [
            "string.rep = nil",
            "getmetatable('').__index = {}",
            "rawset(string, 'x', 1)",
            "os.clock = nil",
        ] {
            let err = lua.load(code).exec().unwrap_err().to_string();
            assert!(err.contains("readonly"), "{code}: {err}");
        }
        // Globals written by the script stay in its own table.
        lua.load("x = 1").exec().unwrap();
        assert_eq!(lua.load("return x").eval::<i32>().unwrap(), 1);
    }

    #[test]
    fn replaced_functions_keep_their_meaning() {
        let lua = sealed();
        let eval = |code: &str| -> String { lua.load(code).eval().unwrap() };
        let cases = [
            ("return tostring(string.find('hello world', 'o w'))", "5"),
            (
                "return table.concat({string.find('hello', 'l', 1, true)}, ',')",
                "3,3",
            ),
            (
                "return table.concat({('hello'):find('l', -2, true)}, ',')",
                "4,4",
            ),
            ("return table.concat({('hello'):find('', 3)}, ',')", "3,2"),
            ("return tostring(('hello'):find('x', 1, true))", "nil"),
            ("return tostring(('hello'):find('l', 10, true))", "nil"),
            (
                "return table.concat({('a.b'):find('.', 1, true)}, ',')",
                "2,2",
            ),
            ("return table.concat({('abc'):find('b.')}, ',')", "2,3"),
            ("return table.concat(('a,b,,c'):split(','), '|')", "a|b||c"),
            ("return table.concat(('a<>b<>'):split('<>'), '|')", "a|b|"),
            ("return table.concat(('abc'):split(''), '|')", "a|b|c"),
            ("return tostring(#(''):split(','))", "1"),
            ("return table.concat(('x,y'):split(), '|')", "x|y"),
            (
                "local t = {3, 1, 2} table.sort(t) return table.concat(t, ',')",
                "1,2,3",
            ),
            (
                "local t = {3, 1, 2} table.sort(t, function(a, b) return a > b end) \
                 return table.concat(t, ',')",
                "3,2,1",
            ),
        ];
        for (code, expected) in cases {
            assert_eq!(eval(code), expected, "{code}");
        }
    }

    #[test]
    fn collectgarbage_only_counts() {
        let lua = sealed();
        let kb: f64 = lua.load("return collectgarbage('count')").eval().unwrap();
        assert!(kb > 0.0);
        assert!(lua.load("collectgarbage('collect')").exec().is_err());
        assert!(lua.load("collectgarbage()").exec().is_err());
    }
}
