//! Listeners and links. Transport knows bytes and sockets, never subjects.
//!
//! Today: TCP listeners tuned for a message router. TLS, WebSocket and QUIC
//! links will live here too, each handing the router a plain byte stream.

pub mod tcp;
