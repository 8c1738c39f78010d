//! serde_json errors in the caller's words: what was expected, where, with JSON's names for things
//! (object, array, whole number) instead of Rust's (`struct NotifyBody`, `u64`, `ident`).

use serde_json::error::Category;

/// A serde_json error as a sentence for whoever wrote the JSON (position included for syntax).
pub fn describe(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let position = format!(" at line {} column {}", err.line(), err.column());
    let text = text.strip_suffix(&position).unwrap_or(&text);
    match err.classify() {
        Category::Syntax | Category::Eof => {
            format!("invalid JSON at line {}, column {}: {}", err.line(), err.column(), syntax_words(text))
        }
        Category::Data | Category::Io => data_words(text),
    }
}

/// [`describe`] with the field it happened in (`path` from serde_path_to_error), when there is one
/// and serde's message does not already name it.
pub fn describe_at(path: &str, err: &serde_json::Error) -> String {
    let text = describe(err);
    let names_itself = err.to_string().starts_with("unknown field");
    if !err.is_data() || path == "." || path == "?" || names_itself { text } else { format!("field `{path}`: {text}") }
}

/// Explains serde_json's terse syntax messages.
fn syntax_words(text: &str) -> String {
    let words = match text {
        "expected ident" => {
            "expected a value; strings need double quotes, and the only bare words are true, false, null"
        }
        "expected value" => "expected a value (a \"string\", a number, an object, an array, true, false or null)",
        "trailing characters" => "unexpected text after the end of the JSON value",
        "key must be a string" => "object keys must be strings in double quotes",
        "trailing comma" => "a comma before a closing bracket or brace",
        t if t.starts_with("EOF while parsing") => "the JSON ends too early (an unclosed string, object or array?)",
        t => t,
    };
    words.to_string()
}

/// Replaces Rust's type names in a data error with JSON's.
fn data_words(text: &str) -> String {
    let mut out = text.to_string();
    for rust in ["expected struct ", "expected internally tagged enum ", "expected enum "] {
        while let Some(start) = out.find(rust) {
            let name = &out[start + rust.len()..];
            let end = start + rust.len() + name.find(|c: char| !c.is_alphanumeric() && c != '_').unwrap_or(name.len());
            out.replace_range(start..end, "expected a JSON object");
        }
    }
    for (rust, json) in [
        ("expected a map", "expected a JSON object"),
        ("expected a sequence", "expected an array"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected unit", "expected null"),
        ("invalid type: map", "invalid type: an object"),
        ("invalid type: sequence", "invalid type: an array"),
        ("invalid type: unit value", "invalid type: null"),
        ("invalid type: floating point", "invalid type: number"),
        ("invalid type: ", "got "),
        ("invalid value: ", "got "),
    ] {
        out = out.replace(rust, json);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        since: Option<u64>,
        name: Option<String>,
    }

    fn message<T: serde::de::DeserializeOwned + std::fmt::Debug>(json: &str) -> String {
        describe(&serde_json::from_str::<T>(json).expect_err("invalid"))
    }

    #[test]
    fn no_rust_names_reach_the_caller() {
        let cases = [
            message::<Body>("5"),
            message::<Body>("not json"),
            message::<Body>(r#"{"since": -1}"#),
            message::<Body>(r#"{"since": 1.5}"#),
            message::<Body>(r#"{"name": [1]}"#),
            message::<Body>(r#"{"name": {}}"#),
            message::<Body>("{"),
            message::<Body>("{} x"),
            message::<Body>("{a:1}"),
        ];
        for text in &cases {
            for rust in ["struct", "Body", "u64", "ident", "map", "sequence", "EOF", "floating point"] {
                assert!(!text.contains(rust), "{rust:?} in {text:?}");
            }
        }
        assert_eq!(cases[0], "got integer `5`, expected a JSON object");
        assert!(
            cases[1].starts_with("invalid JSON at line 1, column 2: expected a value; strings need"),
            "{}",
            cases[1]
        );
        assert!(cases[2].contains("expected a whole number, 0 or more"), "{}", cases[2]);
        assert!(cases[6].contains("ends too early"), "{}", cases[6]);
    }

    #[test]
    fn the_field_is_named_once_and_only_for_data_errors() {
        let at = |json: &str| {
            let mut de = serde_json::Deserializer::from_str(json);
            let err = serde_path_to_error::deserialize::<_, Body>(&mut de).expect_err("invalid");
            describe_at(&err.path().to_string(), err.inner())
        };
        assert_eq!(at(r#"{"since": "x"}"#), "field `since`: got string \"x\", expected a whole number, 0 or more");
        assert!(at(r#"{"nope": 1}"#).starts_with("unknown field `nope`"), "{}", at(r#"{"nope": 1}"#));
        assert!(at("{x").starts_with("invalid JSON at line 1, column 2"), "{}", at("{x"));
    }
}
