//! The typed protocol operations.

use bytes::Bytes;

/// One protocol operation, in either direction.
///
/// Fields are `Bytes` slices of the buffer they were parsed from, so a
/// parsed message costs no copies; the server copies only into each
/// subscriber's outbound buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `INFO {json}`: server to client, the raw JSON text.
    Info(Bytes),
    /// `CONNECT {json}`: client to server, the raw JSON text.
    Connect(Bytes),
    /// `PUB subject [reply] size`.
    Pub {
        subject: Bytes,
        reply: Option<Bytes>,
        payload: Bytes,
    },
    /// `HPUB subject [reply] header_size total_size`; `headers` is the raw
    /// `NATS/1.0` block and `payload` is what follows it.
    HPub {
        subject: Bytes,
        reply: Option<Bytes>,
        headers: Bytes,
        payload: Bytes,
    },
    /// `SUB subject [queue] sid`.
    Sub {
        subject: Bytes,
        queue: Option<Bytes>,
        sid: Bytes,
    },
    /// `UNSUB sid [max]`; a `max` that is not a number parses as `Some(0)`,
    /// which (like no max at all) means "remove now", as in nats-server.
    Unsub { sid: Bytes, max: Option<u64> },
    /// `MSG subject sid [reply] size`: server to client.
    Msg {
        subject: Bytes,
        sid: Bytes,
        reply: Option<Bytes>,
        payload: Bytes,
    },
    /// `HMSG subject sid [reply] header_size total_size`: server to client.
    HMsg {
        subject: Bytes,
        sid: Bytes,
        reply: Option<Bytes>,
        headers: Bytes,
        payload: Bytes,
    },
    /// `PING`.
    Ping,
    /// `PONG`.
    Pong,
    /// `+OK`.
    Ok,
    /// `-ERR 'text'`: the text as sent, quotes included.
    Err(Bytes),
}

impl Op {
    /// The protocol verb, for logs and traces.
    pub fn verb(&self) -> &'static str {
        match self {
            Op::Info(_) => "INFO",
            Op::Connect(_) => "CONNECT",
            Op::Pub { .. } => "PUB",
            Op::HPub { .. } => "HPUB",
            Op::Sub { .. } => "SUB",
            Op::Unsub { .. } => "UNSUB",
            Op::Msg { .. } => "MSG",
            Op::HMsg { .. } => "HMSG",
            Op::Ping => "PING",
            Op::Pong => "PONG",
            Op::Ok => "+OK",
            Op::Err(_) => "-ERR",
        }
    }
}
