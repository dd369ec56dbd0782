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

use mlua::{Lua, LuaOptions, StdLib, Table};

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
    // With `catch_rust_panics` off, `pcall` cannot swallow a Rust panic: it
    // always reaches the run, which reports it as a bug.
    let lua = Lua::new_with(libs, LuaOptions::new().catch_rust_panics(false))?;

    let globals = lua.globals();
    for name in REMOVED_GLOBALS {
        globals.raw_set(*name, mlua::Nil)?;
    }

    // `os` keeps its clocks only.
    let os: Table = globals.raw_get("os")?;
    let clocks = lua.create_table()?;
    clocks.raw_set("clock", os.raw_get::<mlua::Function>("clock")?)?;
    clocks.raw_set("time", os.raw_get::<mlua::Function>("time")?)?;
    globals.raw_set("os", clocks)?;

    Ok(lua)
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
    fn collectgarbage_only_counts() {
        let lua = sealed();
        let kb: f64 = lua.load("return collectgarbage('count')").eval().unwrap();
        assert!(kb > 0.0);
        assert!(lua.load("collectgarbage('collect')").exec().is_err());
        assert!(lua.load("collectgarbage()").exec().is_err());
    }
}
