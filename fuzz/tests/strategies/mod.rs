//! Generators shared by the fuzz targets: JSON text (not `Value`s, so numbers such as `1e400`
//! and nesting deeper than serde_json's recursion limit can be produced), names and strings.

#![allow(dead_code)]

use proptest::prelude::*;

/// Numbers a publisher or a client can write that are valid JSON but odd for a parser.
pub const ODD_NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1e400",
    "-1e400",
    "1e-400",
    "1.7976931348623157e308",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "1e19",
    "10000000000000000000",
    "0.5",
    "-1",
    "123456789012345678901234567890",
    "4.2",
    "1E2",
    "1e+2",
];

/// A JSON string literal holding arbitrary text (escapes, unicode, control characters).
pub fn json_string() -> impl Strategy<Value = String> {
    any::<String>().prop_map(|s| serde_json::Value::String(s).to_string())
}

/// A JSON number literal: odd ones, integers or floats.
pub fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(ODD_NUMBERS).prop_map(str::to_string),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()),
    ]
}

/// A scalar JSON literal.
pub fn json_leaf() -> BoxedStrategy<String> {
    prop_oneof![
        json_number(),
        json_string(),
        Just("true".to_string()),
        Just("false".to_string()),
        Just("null".to_string()),
        Just("{}".to_string()),
        Just("[]".to_string()),
    ]
    .boxed()
}

/// Any JSON text: a leaf, a small array or object of leaves, or a leaf nested up to 300 levels
/// deep (serde_json's own recursion limit is 128).
pub fn json_value() -> BoxedStrategy<String> {
    prop_oneof![
        4 => json_leaf(),
        2 => prop::collection::vec(json_leaf(), 0..6).prop_map(|v| format!("[{}]", v.join(","))),
        2 => prop::collection::vec((json_string(), json_leaf()), 0..6).prop_map(|kv| {
            let fields: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("{{{}}}", fields.join(","))
        }),
        1 => (0usize..300, json_leaf(), any::<bool>()).prop_map(|(depth, leaf, arrays)| nest(depth, &leaf, arrays)),
    ]
    // Boxed: the nested strategy types otherwise take more stack than a test thread has.
    .boxed()
}

/// `leaf` wrapped in `depth` arrays or objects.
pub fn nest(depth: usize, leaf: &str, arrays: bool) -> String {
    if arrays {
        format!("{}{leaf}{}", "[".repeat(depth), "]".repeat(depth))
    } else {
        format!("{}{leaf}{}", "{\"a\":".repeat(depth), "}".repeat(depth))
    }
}

/// Characters the protocol allows in channel names, plus a few it does not.
pub const NAME_CHARS: &[char] = &[
    'a', 'b', 'z', 'A', 'Z', '0', '9', '_', '-', '.', ':', '@', '=', '/', ' ', '*', '#', '%', 'é', '\u{0}', '\u{202e}',
    '"', '\\', '日',
];

/// A name of 0 to 140 characters, mostly from the allowed set.
pub fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(NAME_CHARS), 0..140).prop_map(|c| c.into_iter().collect())
}

/// A short name from the allowed set only (1 to 12 characters).
pub fn short_valid_name() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&NAME_CHARS[..14]), 1..12).prop_map(|c| c.into_iter().collect())
}

/// A channel name with one of the prefixes the rules treat specially.
pub fn channel() -> impl Strategy<Value = String> {
    let prefixes = &["", "user:", "role:", "private:", "admin:", "hub:", "chat:", "staff:", "service:", "broadcast"];
    prop_oneof![
        3 => (prop::sample::select(prefixes), short_valid_name()).prop_map(|(p, n)| format!("{p}{n}")),
        1 => prop::sample::select(prefixes).prop_map(str::to_string),
        1 => name(),
    ]
}
