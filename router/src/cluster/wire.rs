//! The cluster wire protocol: protobuf messages (prost) exchanged between
//! nodes over QUIC frames. Sans-IO: encoding and decoding only.
//!
//! The schema is written as prost derives rather than compiled from a
//! `.proto` file, so building needs no `protoc`; `docs/cluster.proto`
//! mirrors it for readers and other implementations.
//!
//! A link carries one control stream each way (`Control` frames) and several
//! message streams (`MessageBatch` frames). A batch is the concatenation of
//! encoded `msgs` fields, so senders append messages to a buffer as they
//! route them and ship the buffer as one frame.

use bytes::{BufMut, Bytes};
use prost::Message;

/// Version of the cluster protocol spoken in `Hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// What a node says about itself first on every link.
#[derive(Clone, PartialEq, Message)]
pub struct Hello {
    /// The node's nkey public key (`N...`), its server id.
    #[prost(string, tag = "1")]
    pub node_id: String,
    /// Must equal the receiver's cluster name.
    #[prost(string, tag = "2")]
    pub cluster_name: String,
    #[prost(string, tag = "3")]
    pub server_name: String,
    /// `host:port` other nodes dial to reach this node's cluster endpoint.
    #[prost(string, tag = "4")]
    pub cluster_url: String,
    /// `host:port` clients connect to, for INFO `connect_urls` (empty with `no_advertise`).
    #[prost(string, tag = "5")]
    pub client_url: String,
    #[prost(uint32, tag = "6")]
    pub version: u32,
    /// Chosen by the dialing node and echoed by the acceptor: when two links
    /// to the same node race, both ends keep the same one by comparing it.
    #[prost(uint64, tag = "7")]
    pub link_nonce: u64,
    /// Random per process start: a link to the same node id with another
    /// boot id is left over from before that node restarted.
    #[prost(uint64, tag = "8")]
    pub boot_id: u64,
}

/// One change of interest: a subject (and queue group) gained or lost local subscribers.
#[derive(Clone, PartialEq, Message)]
pub struct Interest {
    #[prost(bytes = "bytes", tag = "1")]
    pub subject: Bytes,
    /// Empty for plain subscriptions.
    #[prost(bytes = "bytes", tag = "2")]
    pub queue: Bytes,
    /// Number of local subscriptions behind this interest (queue weight).
    #[prost(uint32, tag = "3")]
    pub weight: u32,
    /// True when the interest is gone.
    #[prost(bool, tag = "4")]
    pub remove: bool,
}

/// A set of interest changes; `full` replaces everything known before.
#[derive(Clone, PartialEq, Message)]
pub struct InterestBatch {
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<Interest>,
    #[prost(bool, tag = "2")]
    pub full: bool,
}

/// A member of the cluster as one node knows it, for gossip.
#[derive(Clone, PartialEq, Message)]
pub struct NodeInfo {
    #[prost(string, tag = "1")]
    pub node_id: String,
    #[prost(string, tag = "2")]
    pub cluster_url: String,
    #[prost(string, tag = "3")]
    pub client_url: String,
    #[prost(uint64, tag = "4")]
    pub boot_id: u64,
}

/// The nodes a node is linked to, so every member learns every other.
#[derive(Clone, PartialEq, Message)]
pub struct Gossip {
    #[prost(message, repeated, tag = "1")]
    pub nodes: Vec<NodeInfo>,
}

/// Liveness and round-trip probe.
#[derive(Clone, PartialEq, Message)]
pub struct Ping {
    #[prost(uint64, tag = "1")]
    pub nonce: u64,
    #[prost(bool, tag = "2")]
    pub pong: bool,
}

/// A frame on the control stream.
#[derive(Clone, PartialEq, Message)]
pub struct Control {
    #[prost(oneof = "control::Kind", tags = "1, 2, 3, 4")]
    pub kind: Option<control::Kind>,
}

/// The kinds of control frames.
pub mod control {
    /// One control frame's content.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Hello(super::Hello),
        #[prost(message, tag = "2")]
        Interest(super::InterestBatch),
        #[prost(message, tag = "3")]
        Gossip(super::Gossip),
        #[prost(message, tag = "4")]
        Ping(super::Ping),
    }
}

/// A message routed to another node, delivered there only to local clients.
#[derive(Clone, PartialEq, Message)]
pub struct RoutedMsg {
    #[prost(bytes = "bytes", tag = "1")]
    pub subject: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub reply: Bytes,
    /// The `NATS/1.0` block, if the message has headers.
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub headers: Option<Bytes>,
    #[prost(bytes = "bytes", tag = "4")]
    pub payload: Bytes,
    /// Deliver to the receiver's plain (non-queue) subscribers.
    #[prost(bool, tag = "5")]
    pub plain: bool,
    /// Queue groups the receiver delivers to (one member each).
    #[prost(bytes = "bytes", repeated, tag = "6")]
    pub queues: Vec<Bytes>,
    /// Interest frames the sender had queued on the control stream when it
    /// routed this message. The receiver delivers the message only after it
    /// has applied that many, so a reply can never overtake the SUB its
    /// requester sent first (control and message streams are not ordered
    /// with each other).
    #[prost(uint64, tag = "7")]
    pub interest_version: u64,
}

/// A frame on a message stream: messages in publish order.
#[derive(Clone, PartialEq, Message)]
pub struct MessageBatch {
    #[prost(message, repeated, tag = "1")]
    pub msgs: Vec<RoutedMsg>,
}

/// Appends `msg` to a buffer holding an encoded `MessageBatch`.
pub fn append_to_batch(buf: &mut impl BufMut, msg: &RoutedMsg) {
    prost::encoding::message::encode(1, msg, buf);
}

/// Encodes a control frame.
pub fn encode_control(kind: control::Kind) -> Vec<u8> {
    Control { kind: Some(kind) }.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn appended_messages_decode_as_one_batch() {
        let a = RoutedMsg {
            subject: Bytes::from_static(b"foo"),
            reply: Bytes::new(),
            headers: None,
            payload: Bytes::from_static(b"hello"),
            plain: true,
            queues: vec![],
            interest_version: 0,
        };
        let b = RoutedMsg {
            subject: Bytes::from_static(b"bar"),
            reply: Bytes::from_static(b"_INBOX.1"),
            headers: Some(Bytes::from_static(b"NATS/1.0\r\n\r\n")),
            payload: Bytes::new(),
            plain: false,
            queues: vec![Bytes::from_static(b"q")],
            interest_version: 7,
        };
        let mut buf = BytesMut::new();
        append_to_batch(&mut buf, &a);
        append_to_batch(&mut buf, &b);
        let batch = MessageBatch::decode(buf.freeze()).unwrap();
        assert_eq!(batch.msgs, vec![a, b]);
    }

    #[test]
    fn control_round_trip() {
        let hello = Hello {
            node_id: "N1".into(),
            cluster_name: "c".into(),
            version: PROTOCOL_VERSION,
            ..Default::default()
        };
        let bytes = encode_control(control::Kind::Hello(hello.clone()));
        let back = Control::decode(&bytes[..]).unwrap();
        assert_eq!(back.kind, Some(control::Kind::Hello(hello)));
    }
}
