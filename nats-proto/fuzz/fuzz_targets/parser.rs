//! Fuzzes `nats_proto::Parser` with arbitrary bytes.
//!
//! Input layout: byte 0 picks the limits (low nibble: `max_control_line`,
//! high nibble: `max_payload`; 0 means the default, anything else a small
//! value so limit edges are reachable), bytes 1..3 pick a split point (u16,
//! little endian, modulo the stream length + 1), the rest is the byte stream.
//!
//! Invariants checked:
//! * the parser never panics;
//! * feeding the stream in two pieces (split at the chosen point) yields the
//!   same operations, the same error (if any) and the same unconsumed bytes
//!   as feeding it whole; for short streams, so does feeding it byte by byte;
//! * when the whole stream parses without error, re-encoding the operations
//!   with `nats_proto::encode::encode` and parsing that yields the same
//!   operations and consumes every byte.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nats_proto::encode::encode;
use nats_proto::{Limits, Op, Parser, ProtoError};

/// What a parse run produced: the operations, then either the unconsumed
/// bytes (`Ok`) or the error that stopped it.
type Outcome = (Vec<Op>, Result<Vec<u8>, ProtoError>);

/// Parses `chunks` fed one after another into the same buffer, draining
/// every complete operation after each chunk.
fn run<'a>(limits: Limits, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut parser = Parser::new(limits);
    let mut buf = BytesMut::new();
    let mut ops = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match parser.parse(&mut buf) {
                Ok(Some(op)) => ops.push(op),
                Ok(None) => break,
                Err(e) => return (ops, Err(e)),
            }
        }
    }
    (ops, Ok(buf.to_vec()))
}

fn limits_from(selector: u8) -> Limits {
    let mcl = (selector & 0x0f) as usize;
    let mp = (selector >> 4) as usize;
    Limits {
        max_control_line: if mcl == 0 {
            nats_proto::DEFAULT_MAX_CONTROL_LINE
        } else {
            mcl * 3
        },
        max_payload: if mp == 0 {
            nats_proto::DEFAULT_MAX_PAYLOAD
        } else {
            (mp - 1) * 5
        },
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let limits = limits_from(data[0]);
    let stream = &data[3..];
    let split = u16::from_le_bytes([data[1], data[2]]) as usize % (stream.len() + 1);

    let whole = run(limits, [stream]);

    let (head, tail) = stream.split_at(split);
    let halves = run(limits, [head, tail]);
    assert_eq!(whole, halves, "split at {split} changed the outcome");

    if stream.len() <= 256 {
        let bytewise = run(limits, stream.chunks(1));
        assert_eq!(whole, bytewise, "byte-by-byte feeding changed the outcome");
    }

    if let (ops, Ok(_)) = &whole {
        let mut out = BytesMut::new();
        for op in ops {
            encode(op, &mut out);
        }
        let (again, rest) = run(limits, [&out[..]]);
        assert_eq!(&again, ops, "re-encoded operations parse differently");
        assert_eq!(rest, Ok(Vec::new()), "re-encoding left bytes unconsumed");
    }
});
