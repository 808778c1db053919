//! Reads the JSON of client `CONNECT` and `INFO` lines the way nats-server's
//! Go decoder (`encoding/json` into a struct) does, because clients and their
//! test suites rely on its quirks:
//!
//! * keys match field names without regard to case (Go's folding: ASCII
//!   letters, plus U+017F for `s` and U+212A for `k`);
//! * when several keys name one field, the last one wins;
//! * unknown keys are ignored, `null` leaves a field as it was, and a JSON
//!   `null` instead of an object sets nothing at all;
//! * a value of the wrong type for a known field is an error even when a
//!   later key would have replaced it, and so is anything after the value;
//! * invalid UTF-8 inside strings is replaced, not rejected.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// The Go type of a struct field, as far as decoding is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Bool,
    Str,
    /// An integer type with its range (`int`, `int32`, `uint64`, `byte`).
    Int {
        min: i128,
        max: i128,
    },
    /// `[]string`.
    StrList,
    /// `[]byte`: a base64 string.
    Base64,
    /// A pointer to a struct with these fields.
    Struct(&'static [(&'static str, Kind)]),
}

/// Go's `int` on 64-bit platforms.
pub const INT: Kind = Kind::Int {
    min: i64::MIN as i128,
    max: i64::MAX as i128,
};

/// A decoded JSON value, keeping every object entry in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float,
    Str(String),
    List(Vec<Value>),
    Object(Vec<(String, Value)>),
}

/// Decodes `json` into the fields of `schema`: returns, in input order, each
/// known key's field name and its (type-checked, non-null) value. Applying
/// them in order gives Go's result, the last duplicate winning.
pub fn decode(
    json: &[u8],
    schema: &'static [(&'static str, Kind)],
) -> Result<Vec<(&'static str, Value)>, String> {
    let text = String::from_utf8_lossy(json);
    let value: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    fields(value, schema)
}

fn fields(
    value: Value,
    schema: &'static [(&'static str, Kind)],
) -> Result<Vec<(&'static str, Value)>, String> {
    let entries = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Object(entries) => entries,
        other => return Err(format!("cannot decode {} into an object", describe(&other))),
    };
    let mut out = Vec::new();
    let mut first_err = None;
    for (key, value) in entries {
        let folded = fold(&key);
        let Some(&(name, kind)) = schema.iter().find(|(name, _)| fold(name) == folded) else {
            continue;
        };
        if value == Value::Null {
            continue;
        }
        match check(value, kind) {
            Ok(v) => out.push((name, v)),
            // Go keeps going after a type error and reports the first one.
            Err(e) => {
                first_err.get_or_insert(format!("field {name}: {e}"));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

fn check(value: Value, kind: Kind) -> Result<Value, String> {
    let ok = match (&value, kind) {
        (Value::Bool(_), Kind::Bool) | (Value::Str(_), Kind::Str) => true,
        (Value::Int(n), Kind::Int { min, max }) => (min..=max).contains(n),
        (Value::Str(s), Kind::Base64) => valid_base64(s),
        (Value::List(items), Kind::StrList) => items
            .iter()
            .all(|v| matches!(v, Value::Str(_) | Value::Null)),
        (Value::Object(_), Kind::Struct(schema)) => {
            return fields(value, schema).map(|_| Value::Null);
        }
        _ => false,
    };
    if ok {
        Ok(value)
    } else {
        Err(format!("cannot decode {} as {kind:?}", describe(&value)))
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Int(_) | Value::Float => "a number",
        Value::Str(_) => "a string",
        Value::List(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Go's key folding, reduced to what can match an ASCII field name.
fn fold(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\u{17F}' => 'S',
            '\u{212A}' => 'K',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// Go's `base64.StdEncoding` (which skips CR and LF).
fn valid_base64(s: &str) -> bool {
    let b: Vec<u8> = s.bytes().filter(|&c| c != b'\r' && c != b'\n').collect();
    if !b.len().is_multiple_of(4) {
        return false;
    }
    let pad = b.iter().rev().take_while(|&&c| c == b'=').count();
    pad <= 2
        && b[..b.len() - pad]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Int(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Int(n.into()))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Float)
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::Str(s.to_owned()))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        Ok(Value::Str(s))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            entries.push((k, v));
        }
        Ok(Value::Object(entries))
    }
}

/// nats-server's `SubjectPermission` (route and leafnode `import`/`export`).
const PERMISSION: &[(&str, Kind)] = &[("allow", Kind::StrList), ("deny", Kind::StrList)];

/// nats-server's `ClientOpts`: every CONNECT field, used by Tern or not, so
/// that a wrongly typed one is refused as it is there.
pub const CONNECT_FIELDS: &[(&str, Kind)] = &[
    ("echo", Kind::Bool),
    ("verbose", Kind::Bool),
    ("pedantic", Kind::Bool),
    ("tls_required", Kind::Bool),
    ("nkey", Kind::Str),
    ("jwt", Kind::Str),
    ("sig", Kind::Str),
    ("auth_token", Kind::Str),
    ("user", Kind::Str),
    ("pass", Kind::Str),
    ("name", Kind::Str),
    ("lang", Kind::Str),
    ("version", Kind::Str),
    ("protocol", INT),
    ("account", Kind::Str),
    ("new_account", Kind::Bool),
    ("headers", Kind::Bool),
    ("no_responders", Kind::Bool),
    ("import", Kind::Struct(PERMISSION)),
    ("export", Kind::Struct(PERMISSION)),
    ("remote_account", Kind::Str),
    ("proxy_sig", Kind::Str),
];

const BYTE: Kind = Kind::Int { min: 0, max: 255 };

/// nats-server's `Info`: a client may send INFO, which is decoded (and
/// otherwise ignored) there, closing the connection if that fails.
pub const INFO_FIELDS: &[(&str, Kind)] = &[
    ("server_id", Kind::Str),
    ("server_name", Kind::Str),
    ("version", Kind::Str),
    ("proto", INT),
    ("git_commit", Kind::Str),
    ("go", Kind::Str),
    ("host", Kind::Str),
    ("port", INT),
    ("headers", Kind::Bool),
    ("auth_required", Kind::Bool),
    ("tls_required", Kind::Bool),
    ("tls_verify", Kind::Bool),
    ("tls_available", Kind::Bool),
    (
        "max_payload",
        Kind::Int {
            min: i32::MIN as i128,
            max: i32::MAX as i128,
        },
    ),
    ("jetstream", Kind::Bool),
    ("ip", Kind::Str),
    (
        "client_id",
        Kind::Int {
            min: 0,
            max: u64::MAX as i128,
        },
    ),
    ("client_ip", Kind::Str),
    ("nonce", Kind::Str),
    ("cluster", Kind::Str),
    ("cluster_dynamic", Kind::Bool),
    ("domain", Kind::Str),
    ("connect_urls", Kind::StrList),
    ("ws_connect_urls", Kind::StrList),
    ("ldm", Kind::Bool),
    ("compression", Kind::Str),
    ("connect_info", Kind::Bool),
    ("remote_account", Kind::Str),
    ("acc_is_sys", Kind::Bool),
    ("api_lvl", INT),
    ("import", Kind::Struct(PERMISSION)),
    ("export", Kind::Struct(PERMISSION)),
    ("lnoc", Kind::Bool),
    ("lnocu", Kind::Bool),
    ("info_on_connect", Kind::Bool),
    ("route_pool_size", INT),
    ("route_pool_idx", INT),
    ("route_account", Kind::Str),
    ("route_acc_add_reqid", Kind::Str),
    ("gossip_mode", BYTE),
    ("gateway", Kind::Str),
    ("gateway_urls", Kind::StrList),
    ("gateway_url", Kind::Str),
    ("gateway_cmd", BYTE),
    ("gateway_cmd_payload", Kind::Base64),
    ("gateway_nrp", Kind::Bool),
    ("gateway_iom", Kind::Bool),
    ("leafnode_urls", Kind::StrList),
    ("xkey", Kind::Str),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn names(json: &str) -> Result<Vec<(&'static str, Value)>, String> {
        decode(json.as_bytes(), CONNECT_FIELDS)
    }

    #[test]
    fn keys_fold_case_and_last_wins() {
        let got = names(r#"{"VERBOSE":false,"Verbose":true,"verbo\u017fe":null,"xx":1}"#).unwrap();
        assert_eq!(
            got,
            vec![
                ("verbose", Value::Bool(false)),
                ("verbose", Value::Bool(true))
            ]
        );
        // The Kelvin sign folds to K: "KEEP" names no field, so it is ignored.
        assert_eq!(names("{\"\u{212A}eep\":1}").unwrap(), vec![]);
        assert_eq!(names("null").unwrap(), vec![]);
    }

    #[test]
    fn type_errors_win_over_later_values() {
        assert!(names(r#"{"verbose":"yes","verbose":true}"#).is_err());
        assert!(names(r#"{"protocol":1.0}"#).is_err());
        assert!(names(r#"{"protocol":99999999999999999999}"#).is_err());
        assert!(names(r#"{"import":{"allow":"a"}}"#).is_err());
        assert!(names(r#"{"import":{"allow":["a",null]}}"#).is_ok());
        assert!(names(r#"{} x"#).is_err());
        assert!(names(r#"[1]"#).is_err());
        assert!(names(r#"5"#).is_err());
    }

    #[test]
    fn invalid_utf8_in_strings_is_replaced() {
        let got = decode(b"{\"name\":\"a\xffb\"}", CONNECT_FIELDS).unwrap();
        assert_eq!(got, vec![("name", Value::Str("a\u{FFFD}b".into()))]);
    }

    #[test]
    fn info_fields() {
        let info = |s: &str| decode(s.as_bytes(), INFO_FIELDS);
        assert!(info(r#"{"gateway_cmd_payload":"aGk="}"#).is_ok());
        assert!(info(r#"{"gateway_cmd_payload":"a"}"#).is_err());
        assert!(info(r#"{"gateway_cmd":256}"#).is_err());
        assert!(info(r#"{"max_payload":3000000000}"#).is_err());
        assert!(info(r#"{"client_id":-1}"#).is_err());
        assert!(info(r#"{"PORT":"x"}"#).is_err());
        assert!(info(r#"{"connect_urls":["a:1"],"port":4222}"#).is_ok());
    }
}
