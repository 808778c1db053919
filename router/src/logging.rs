//! Logging setup: nats-server's levels (-D debug, -V trace) through tracing,
//! to stderr or to the `-l` file.

use std::path::Path;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` overrides the flag-derived level.
pub fn init(debug: bool, trace: bool, file: Option<&Path>) -> std::io::Result<()> {
    let level = if trace {
        "trace"
    } else if debug {
        "debug"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .init();
        }
        None => {
            use std::io::IsTerminal;
            let ansi = std::io::stderr().is_terminal();
            builder.with_ansi(ansi).with_writer(std::io::stderr).init()
        }
    }
    Ok(())
}
