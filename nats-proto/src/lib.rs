//! Sans-IO implementation of the NATS client protocol.
//!
//! Bytes go in, typed [`Op`]s come out, and encoders turn operations back
//! into bytes. Nothing here touches a socket or a runtime, so the parser can
//! be unit-tested, property-tested and fuzzed on its own, and both the server
//! and test clients share one definition of the wire format. [`gojson`] reads
//! CONNECT and INFO JSON the way nats-server's Go decoder does.

pub mod encode;
pub mod gojson;
pub mod headers;
pub mod op;
pub mod parser;

pub use headers::{HeaderError, Headers};
pub use op::Op;
pub use parser::{Limits, Parser, ProtoError};

/// Default largest control line a server accepts (nats-server's `max_control_line`).
pub const DEFAULT_MAX_CONTROL_LINE: usize = 4096;
/// Default largest payload a server accepts (nats-server's `max_payload`, 1 MiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
