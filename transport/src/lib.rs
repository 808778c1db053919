//! Listeners and links. Transport knows bytes and sockets, never subjects.
//!
//! TCP listeners tuned for a message router (client connections), and QUIC
//! links between cluster nodes that move authenticated frames; what the
//! frames mean is up to the router.

pub mod flood;
pub mod quic;
pub mod tcp;
pub mod tls;
