//! Hands memory freed by closed connections back to the operating system.
//!
//! glibc's malloc keeps freed memory in its per-thread arenas: after 5,000
//! connections open and close a few times, RSS stays at hundreds of MB with
//! no client left (see docs/BENCHMARKS.md, "Memory after connection churn").
//! `malloc_trim(0)` returns those free pages. It walks every arena under its
//! lock, so it runs rarely: checked every [`CHECK_EVERY`], only after at
//! least [`TRIM_AFTER_CLOSED`] connections have closed since the last trim,
//! on a blocking thread. Builds with another allocator (features `mimalloc`,
//! `jemalloc`) or another libc do nothing.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::server::Server;

/// How often the closed-connection count is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Connections that must have closed since the last trim before another.
pub const TRIM_AFTER_CLOSED: u64 = 1_000;

/// Whether to trim, given connections closed so far and at the last trim.
pub fn due(closed_now: u64, closed_at_last_trim: u64) -> bool {
    closed_now.saturating_sub(closed_at_last_trim) >= TRIM_AFTER_CLOSED
}

/// Starts the housekeeping task (no-op where trimming does not apply).
pub fn spawn(server: &Arc<Server>) {
    if !ENABLED {
        return;
    }
    let weak: Weak<Server> = Arc::downgrade(server);
    tokio::spawn(async move {
        let mut last = 0u64;
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(server) = weak.upgrade() else { return };
            let closed = server.closed_connections();
            drop(server);
            if due(closed, last) {
                last = closed;
                let _ = tokio::task::spawn_blocking(trim).await;
            }
        }
    });
}

const ENABLED: bool = cfg!(all(
    target_os = "linux",
    target_env = "gnu",
    not(feature = "mimalloc"),
    not(feature = "jemalloc")
));

#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    not(feature = "mimalloc"),
    not(feature = "jemalloc")
))]
fn trim() {
    // SAFETY: malloc_trim only releases free memory of glibc's own heap.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(released, "malloc_trim after closed connections");
}

#[cfg(not(all(
    target_os = "linux",
    target_env = "gnu",
    not(feature = "mimalloc"),
    not(feature = "jemalloc")
)))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_enough_closures() {
        assert!(!due(0, 0));
        assert!(!due(TRIM_AFTER_CLOSED - 1, 0));
        assert!(due(TRIM_AFTER_CLOSED, 0));
        assert!(!due(TRIM_AFTER_CLOSED + 5, TRIM_AFTER_CLOSED));
        assert!(due(3 * TRIM_AFTER_CLOSED, TRIM_AFTER_CLOSED));
    }
}
