//! JSON encoding for text that goes to a model: snapshots, tool results.
//! The Elixir side has no JSON library (BeamLens has no Hex dependencies).

use serde_json::Value;

/// `value` as JSON text of at most about `max_bytes`. Output longer than
/// `max_bytes` is shrunk: long lists keep their first items and long strings
/// their start, with markers saying what was left out; if that is still too
/// long, the text is cut and says so.
pub fn encode_bounded(value: &Value, max_bytes: usize) -> String {
    let full = value.to_string();
    if full.len() <= max_bytes {
        return full;
    }
    for (items, chars) in [(20, 400), (10, 200), (5, 80)] {
        let shrunk = shrink(value, items, chars).to_string();
        if shrunk.len() <= max_bytes {
            return shrunk;
        }
    }
    let shrunk = shrink(value, 5, 80).to_string();
    let mut end = max_bytes.saturating_sub(60).min(shrunk.len());
    while end > 0 && !shrunk.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}... [cut: {} of {} bytes shown]",
        &shrunk[..end],
        end,
        full.len()
    )
}

fn shrink(value: &Value, items: usize, chars: usize) -> Value {
    match value {
        Value::Array(list) => {
            let mut out: Vec<Value> = list
                .iter()
                .take(items)
                .map(|v| shrink(v, items, chars))
                .collect();
            if list.len() > items {
                out.push(Value::String(format!(
                    "... {} more items",
                    list.len() - items
                )));
            }
            Value::Array(out)
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), shrink(v, items, chars)))
                .collect(),
        ),
        Value::String(s) if s.chars().count() > chars => {
            let head: String = s.chars().take(chars).collect();
            Value::String(format!("{head}... [{} chars]", s.chars().count()))
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn small_values_are_encoded_as_is() {
        assert_eq!(encode_bounded(&json!({"a": [1, 2]}), 100), r#"{"a":[1,2]}"#);
    }

    #[test]
    fn long_lists_and_strings_are_shrunk_with_markers() {
        let value = json!({"items": (0..1000).collect::<Vec<_>>(), "text": "x".repeat(5000)});
        let out = encode_bounded(&value, 2_000);
        assert!(out.len() <= 2_000, "{}", out.len());
        assert!(out.contains("more items"));
        assert!(out.contains("[5000 chars]"));
        serde_json::from_str::<Value>(&out).expect("still valid JSON");
    }

    #[test]
    fn hopeless_values_are_cut_with_a_note() {
        let row: serde_json::Map<String, Value> =
            (0..50).map(|i| (format!("key{i}"), json!(i))).collect();
        let value = json!([row]);
        let out = encode_bounded(&value, 100);
        assert!(out.ends_with("bytes shown]"), "{out}");
        assert!(out.len() <= 100, "{}", out.len());
    }
}
