//! Conversion between Lua values and `serde_json::Value`.
//!
//! Lua to JSON (script results, callback arguments):
//!
//! | Lua                                  | JSON                                  |
//! |--------------------------------------|---------------------------------------|
//! | `nil`                                | `null`                                |
//! | booleans                             | booleans                              |
//! | integral numbers below 2^53          | integers; other numbers: floats       |
//! | NaN, ±inf                            | the strings `"nan"`, `"inf"`, `"-inf"` |
//! | strings                              | strings (invalid UTF-8 is replaced)   |
//! | tables with keys exactly `1..n`      | arrays                                |
//! | empty tables                         | empty arrays                          |
//! | other tables                         | objects (keys turned into strings)    |
//! | functions, coroutines, userdata, ... | strings such as `"<function>"`        |
//!
//! Tables are read raw: no metamethod runs during conversion. The result is
//! bounded by depth and by an estimate of its JSON size, so a cyclic or huge
//! table fails with a clear error instead of exhausting memory.
//!
//! JSON to Lua (callback answers): objects become tables with string keys,
//! arrays become sequences (a `null` inside an array leaves a hole), numbers
//! become Lua numbers.

use mlua::{Lua, Table, Value as LuaValue};
use serde_json::{Map, Number, Value};

/// Deepest nesting converted in either direction.
pub const MAX_DEPTH: usize = 64;

/// Why a Lua value could not be converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvertError {
    /// The estimated JSON size went over the limit (bytes).
    TooLarge(usize),
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Lua failed while reading a table (for example out of memory).
    Lua(String),
}

/// Converts a Lua value to JSON, failing when the JSON encoding would be
/// larger than `max_bytes`.
pub fn to_json(value: &LuaValue, max_bytes: usize) -> Result<Value, ConvertError> {
    let mut size = Size {
        used: 0,
        max: max_bytes,
    };
    convert(value, 0, &mut size)
}

/// Converts several values to one JSON array, bounded like [`to_json`].
pub fn to_json_array<'a>(
    values: impl Iterator<Item = &'a LuaValue>,
    max_bytes: usize,
) -> Result<Value, ConvertError> {
    let mut size = Size {
        used: 2,
        max: max_bytes,
    };
    let mut items = Vec::new();
    for value in values {
        size.add(1)?;
        items.push(convert(value, 1, &mut size)?);
    }
    Ok(Value::Array(items))
}

struct Size {
    used: usize,
    max: usize,
}

impl Size {
    /// Fails if `bytes` more would go over the limit, without counting them.
    fn check(&self, bytes: usize) -> Result<(), ConvertError> {
        if self.used.saturating_add(bytes) > self.max {
            Err(ConvertError::TooLarge(self.max))
        } else {
            Ok(())
        }
    }

    fn add(&mut self, bytes: usize) -> Result<(), ConvertError> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.max {
            Err(ConvertError::TooLarge(self.max))
        } else {
            Ok(())
        }
    }
}

fn convert(value: &LuaValue, depth: usize, size: &mut Size) -> Result<Value, ConvertError> {
    if depth > MAX_DEPTH {
        return Err(ConvertError::TooDeep);
    }
    Ok(match value {
        LuaValue::Nil => {
            size.add(4)?;
            Value::Null
        }
        LuaValue::Boolean(b) => {
            size.add(5)?;
            Value::Bool(*b)
        }
        LuaValue::Integer(i) => {
            size.add(8)?;
            Value::Number((*i).into())
        }
        LuaValue::Number(n) => {
            size.add(8)?;
            number_to_json(*n)
        }
        LuaValue::String(s) => {
            let bytes = s.as_bytes();
            // The cheap lower bound first, so that a huge string is refused
            // before it is scanned; then its exact size once escaped.
            size.check(bytes.len() + 2)?;
            size.add(json_string_len(&bytes))?;
            Value::String(String::from_utf8_lossy(&bytes).into_owned())
        }
        LuaValue::Table(table) => table_to_json(table, depth, size)?,
        other => {
            let name = format!("<{}>", other.type_name());
            size.add(name.len() + 2)?;
            Value::String(name)
        }
    })
}

/// The length of `bytes` as a JSON string, quotes included, after invalid
/// UTF-8 is replaced (3 bytes per replacement character) and control
/// characters, quotes and backslashes are escaped as `serde_json` does.
pub fn json_string_len(bytes: &[u8]) -> usize {
    let mut len = 2;
    for chunk in bytes.utf8_chunks() {
        for &byte in chunk.valid().as_bytes() {
            len += match byte {
                b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
                0..=0x1f => 6,
                _ => 1,
            };
        }
        if !chunk.invalid().is_empty() {
            len += 3;
        }
    }
    len
}

/// Lua numbers are doubles: integral ones within the exact range become
/// JSON integers so that `return 42` arrives as `42`, not `42.0`.
fn number_to_json(n: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if n.is_nan() {
        Value::String("nan".into())
    } else if n.is_infinite() {
        Value::String(if n > 0.0 { "inf" } else { "-inf" }.into())
    } else if n.fract() == 0.0 && n.abs() < EXACT {
        Value::Number((n as i64).into())
    } else {
        Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

fn table_to_json(table: &Table, depth: usize, size: &mut Size) -> Result<Value, ConvertError> {
    let lua_error = |e: mlua::Error| ConvertError::Lua(e.to_string());
    let mut entries = Vec::new();
    let mut sequence = true;
    for pair in table.pairs::<LuaValue, LuaValue>() {
        let (key, value) = pair.map_err(lua_error)?;
        // Every entry costs at least its separator; this also bounds the
        // number of entries read before their values are converted.
        size.add(1)?;
        if sequence {
            sequence = matches!(sequence_index(&key), Some(i) if i <= usize::MAX / 2);
        }
        entries.push((key, value));
    }
    size.add(2)?;

    if sequence {
        let mut indexed: Vec<(usize, LuaValue)> = entries
            .into_iter()
            .filter_map(|(k, v)| sequence_index(&k).map(|i| (i, v)))
            .collect();
        indexed.sort_unstable_by_key(|(i, _)| *i);
        if indexed.iter().enumerate().all(|(n, (i, _))| *i == n + 1) {
            let mut items = Vec::with_capacity(indexed.len());
            for (_, value) in &indexed {
                items.push(convert(value, depth + 1, size)?);
            }
            return Ok(Value::Array(items));
        }
        entries = indexed
            .into_iter()
            .map(|(i, v)| (LuaValue::Number(i as f64), v))
            .collect();
    }

    let mut map = Map::new();
    for (key, value) in &entries {
        let key = key_to_string(key);
        size.add(json_string_len(key.as_bytes()) + 1)?;
        let value = convert(value, depth + 1, size)?;
        map.insert(key, value);
    }
    Ok(Value::Object(map))
}

/// `Some(i)` when `key` is a positive integral number.
fn sequence_index(key: &LuaValue) -> Option<usize> {
    match key {
        LuaValue::Integer(i) if *i >= 1 => usize::try_from(*i).ok(),
        LuaValue::Number(n) if *n >= 1.0 && n.fract() == 0.0 && *n < 9.0e15 => Some(*n as usize),
        _ => None,
    }
}

fn key_to_string(key: &LuaValue) -> String {
    match key {
        LuaValue::String(s) => String::from_utf8_lossy(&s.as_bytes()).into_owned(),
        LuaValue::Integer(i) => i.to_string(),
        LuaValue::Number(n) => match number_to_json(*n) {
            Value::String(s) => s,
            other => other.to_string(),
        },
        LuaValue::Boolean(b) => b.to_string(),
        other => format!("<{}>", other.type_name()),
    }
}

/// Converts JSON to a Lua value in `lua` (allocations count against the
/// state's memory limit).
pub fn to_lua(lua: &Lua, value: &Value) -> mlua::Result<LuaValue> {
    to_lua_at(lua, value, 0)
}

fn to_lua_at(lua: &Lua, value: &Value, depth: usize) -> mlua::Result<LuaValue> {
    if depth > MAX_DEPTH {
        return Err(mlua::Error::runtime(format!(
            "value nested deeper than {MAX_DEPTH} levels"
        )));
    }
    Ok(match value {
        Value::Null => LuaValue::Nil,
        Value::Bool(b) => LuaValue::Boolean(*b),
        Value::Number(n) => LuaValue::Number(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => LuaValue::String(lua.create_string(s)?),
        Value::Array(items) => {
            let table = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                table.raw_set(i + 1, to_lua_at(lua, item, depth + 1)?)?;
            }
            LuaValue::Table(table)
        }
        Value::Object(map) => {
            let table = lua.create_table_with_capacity(0, map.len())?;
            for (key, item) in map {
                table.raw_set(key.as_str(), to_lua_at(lua, item, depth + 1)?)?;
            }
            LuaValue::Table(table)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(lua: &Lua, code: &str) -> LuaValue {
        lua.load(code).eval().unwrap()
    }

    #[test]
    fn scalars_convert() {
        let lua = Lua::new();
        assert_eq!(to_json(&eval(&lua, "return 42"), 100), Ok(json!(42)));
        assert_eq!(to_json(&eval(&lua, "return 1.5"), 100), Ok(json!(1.5)));
        assert_eq!(to_json(&eval(&lua, "return 0/0"), 100), Ok(json!("nan")));
        assert_eq!(to_json(&eval(&lua, "return -1/0"), 100), Ok(json!("-inf")));
        assert_eq!(to_json(&eval(&lua, "return 'hé'"), 100), Ok(json!("hé")));
        assert_eq!(
            to_json(&eval(&lua, "return '\\255'"), 100),
            Ok(json!("\u{fffd}"))
        );
        assert_eq!(to_json(&eval(&lua, "return nil"), 100), Ok(json!(null)));
        assert_eq!(to_json(&eval(&lua, "return true"), 100), Ok(json!(true)));
        assert_eq!(
            to_json(&eval(&lua, "return print"), 100),
            Ok(json!("<function>"))
        );
    }

    #[test]
    fn tables_become_arrays_or_objects() {
        let lua = Lua::new();
        assert_eq!(
            to_json(&eval(&lua, "return {1, 'two', {3}}"), 1000),
            Ok(json!([1, "two", [3]]))
        );
        assert_eq!(to_json(&eval(&lua, "return {}"), 1000), Ok(json!([])));
        assert_eq!(
            to_json(&eval(&lua, "return {a = 1, [2] = true, [1.5] = 'x'}"), 1000),
            Ok(json!({"a": 1, "2": true, "1.5": "x"}))
        );
        // A sequence with a hole is an object keyed by the indices.
        assert_eq!(
            to_json(&eval(&lua, "return {[1] = 'a', [3] = 'c'}"), 1000),
            Ok(json!({"1": "a", "3": "c"}))
        );
    }

    #[test]
    fn metamethods_are_not_run() {
        let lua = Lua::new();
        let value = eval(
            &lua,
            "return setmetatable({x = 1}, {__index = function() error('ran') end, \
             __pairs = function() error('ran') end})",
        );
        assert_eq!(to_json(&value, 1000), Ok(json!({"x": 1})));
    }

    #[test]
    fn size_and_depth_are_bounded() {
        let lua = Lua::new();
        let big = eval(&lua, "return string.rep('x', 1000)");
        assert_eq!(to_json(&big, 100), Err(ConvertError::TooLarge(100)));

        let many = eval(
            &lua,
            "local t = {} for i = 1, 10000 do t[i] = i end return t",
        );
        assert_eq!(to_json(&many, 1000), Err(ConvertError::TooLarge(1000)));

        let cyclic = eval(&lua, "local t = {} t.self = t return t");
        assert_eq!(to_json(&cyclic, 1 << 20), Err(ConvertError::TooDeep));
    }

    #[test]
    fn sizes_count_json_escaping() {
        for text in ["plain", "quote\" back\\ nl\n", "\u{1}\u{1f}", "hé €", ""] {
            let encoded = serde_json::to_string(text).unwrap();
            assert_eq!(json_string_len(text.as_bytes()), encoded.len(), "{text:?}");
        }
        // Every invalid byte sequence becomes one U+FFFD (3 bytes).
        assert_eq!(json_string_len(b"\xff"), 5);
        let lua = Lua::new();
        // 3,000 control characters: 3 KB of Lua, 18 KB of JSON.
        let controls = eval(&lua, "return string.rep('\\1', 3000)");
        assert_eq!(
            to_json(&controls, 10_000),
            Err(ConvertError::TooLarge(10_000))
        );
        let invalid = eval(&lua, "return string.rep('\\255', 3000)");
        assert_eq!(to_json(&invalid, 8_000), Err(ConvertError::TooLarge(8_000)));
    }

    #[test]
    fn json_round_trips_through_lua() {
        let lua = Lua::new();
        let value = json!({"name": "x", "list": [1, 2.5, "three", false], "nested": {"k": [[]]}});
        let lua_value = to_lua(&lua, &value).unwrap();
        assert_eq!(to_json(&lua_value, 10_000), Ok(value));
    }
}
