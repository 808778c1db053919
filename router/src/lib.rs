//! Tern's server core and the `tern` binary.
//!
//! Laid out as nats-server is: a room per door over shared core modules.
//!
//! - Doors: [`client`] (NATS clients over TCP), [`cluster`] (QUIC links to
//!   other Tern nodes), [`web`] (HTTP: monitoring); leafnodes and the
//!   websocket/HTTP gateway will join as their own rooms.
//! - Core every door shares: [`server`] (connections, shutdown, lame duck),
//!   [`sublist`] and [`subject`] (the subscription trie and subject rules),
//!   [`outbound`] (bounded per-connection buffers), [`auth`] and
//!   [`auth_jwt`] (who a connection is: passwords, tokens, nkeys,
//!   certificates, operator-mode JWTs; the checks themselves live in `peer`).
//! - Process plumbing: [`cli`], [`config`], [`config_file`], [`options`],
//!   [`logging`], [`reload`] (SIGHUP), [`control`] (`--signal`).

#![recursion_limit = "256"]

pub mod auth;
pub mod auth_jwt;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod config_file;
pub mod control;
pub mod logging;
pub mod memtrim;
pub mod options;
pub mod outbound;
pub mod reload;
pub mod server;
pub mod subject;
pub mod sublist;
pub mod web;
