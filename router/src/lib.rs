//! Tern's server core: the subject trie, clients and their subscriptions,
//! monitoring, and the command line of the `tern` binary.

pub mod bench;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod config_file;
pub mod logging;
pub mod memtrim;
pub mod monitor;
pub mod options;
pub mod outbound;
pub mod server;
pub mod subject;
pub mod sublist;
