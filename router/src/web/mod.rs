//! The HTTP door: monitoring endpoints today; the websocket listener, the
//! HTTP gateway and the console join it here, over the same router core.

pub mod monitor;
pub mod monitor_http;
