//! The bare interpreter, for benchmarks only: the same Luau build and
//! compiler settings as the sandbox, with no sandbox around it (no interrupt,
//! no limits, no fresh globals, one long-lived state per thread). It is the
//! ceiling the sandbox is measured against (`bench/lua_vs_luerl.exs`).
//!
//! Compiled only with the `reference-interpreter` feature, which the NIF
//! enables in test builds only. Never give it untrusted code: nothing bounds
//! its time or memory.

use std::cell::RefCell;

use mlua::chunk::ChunkMode;
use mlua::{Lua, Value};

thread_local! {
    static STATE: RefCell<Option<Lua>> = const { RefCell::new(None) };
}

/// Runs `code` and returns its first result, which must be a number.
///
/// # Errors
///
/// The script's own error, or a message naming the type of a first result
/// that is not a number.
pub fn eval_number(code: &str) -> Result<f64, String> {
    STATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let lua = slot.get_or_insert_with(Lua::new);
        let value: Value = lua
            .load(code)
            .set_name("=reference")
            .set_mode(ChunkMode::Text)
            .eval()
            .map_err(|error| error.to_string())?;
        match value {
            Value::Integer(n) => Ok(n as f64),
            Value::Number(n) => Ok(n),
            other => Err(format!("expected a number, got {}", other.type_name())),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::eval_number;

    #[test]
    fn runs_a_loop_and_reports_errors() {
        let sum = eval_number("local s = 0 for i = 1, 100 do s = s + i end return s");
        assert_eq!(sum, Ok(5050.0));
        assert_eq!(
            eval_number("return 'x'"),
            Err("expected a number, got string".to_string())
        );
        assert!(eval_number("error('boom')").unwrap_err().contains("boom"));
    }
}
