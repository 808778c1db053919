//! Logging setup: nats-server's levels (-D debug, -V trace) through tracing,
//! to stderr or to the `-l` file. Both the level (config reload) and the file
//! (SIGUSR1, for logrotate) can change while the server runs.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Where log lines go: stderr, or a file that can be reopened.
#[derive(Clone)]
struct Sink(Arc<Mutex<Option<(PathBuf, File)>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((_, f)) => f.write(buf),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((_, f)) => f.flush(),
            None => io::stderr().flush(),
        }
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Sink;
    fn make_writer(&'a self) -> Sink {
        self.clone()
    }
}

/// Handles kept to change logging after start-up.
struct Handles {
    sink: Sink,
    filter: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set: it wins over -D/-V and config reloads.
    env_filter: bool,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

fn level(debug: bool, trace: bool) -> &'static str {
    if trace {
        "trace"
    } else if debug {
        "debug"
    } else {
        "info"
    }
}

fn open(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Installs the global subscriber. `RUST_LOG` overrides the flag-derived level.
pub fn init(debug: bool, trace: bool, file: Option<&Path>) -> io::Result<()> {
    use tracing_subscriber::prelude::*;
    let env = EnvFilter::try_from_default_env().ok();
    let env_filter = env.is_some();
    let filter = env.unwrap_or_else(|| EnvFilter::new(level(debug, trace)));
    let (filter, handle) = reload::Layer::new(filter);
    let target = match file {
        Some(p) => Some((p.to_path_buf(), open(p)?)),
        None => None,
    };
    let ansi = target.is_none() && io::IsTerminal::is_terminal(&io::stderr());
    let sink = Sink(Arc::new(Mutex::new(target)));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(ansi)
                .with_writer(sink.clone()),
        )
        .init();
    let _ = HANDLES.set(Handles {
        sink,
        filter: handle,
        env_filter,
    });
    Ok(())
}

/// Changes the level after a config reload (unless `RUST_LOG` is set).
pub fn set_level(debug: bool, trace: bool) {
    if let Some(h) = HANDLES.get() {
        if !h.env_filter {
            let _ = h.filter.reload(EnvFilter::new(level(debug, trace)));
        }
    }
}

/// Reopens the log file, at `new_path` if given, else where it was: after
/// logrotate renamed it (SIGUSR1), new lines go to a fresh file at the
/// original path. Returns false when logging to stderr (nothing to reopen).
pub fn reopen(new_path: Option<&Path>) -> io::Result<bool> {
    let Some(h) = HANDLES.get() else {
        return Ok(false);
    };
    let mut target = h.sink.0.lock().unwrap_or_else(|e| e.into_inner());
    let path = match (new_path, &*target) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some((p, _))) => p.clone(),
        (None, None) => return Ok(false),
    };
    let f = open(&path)?;
    *target = Some((path, f));
    Ok(true)
}
