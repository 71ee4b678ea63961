//! Per-connection limits of HTTP routes: a whole-life bound (`request_timeout`) and a minimum
//! transfer rate (`min_bytes_per_second`).
//!
//! What: the idle timeout alone lets a client that sends one byte just under every
//! `idle_timeout` hold a route's connection slot forever. Two more rules close such a connection:
//!
//! - `request_timeout`: a client connection lives at most this long, from accept (request head
//!   included) to its last byte.
//! - `min_bytes_per_second`: in every consecutive `idle_timeout` window of the connection's life
//!   it must move at least `min_bytes_per_second × idle_timeout` bytes (at least 1), counting the
//!   bytes read from the client and from the upstream together. `0` turns the rule off.
//!
//! How: [`enforce`] races the connection's work against both rules; a [`Meter`] shared with the
//! work counts the bytes. When a rule wins, the work future is dropped, which closes both sockets
//! without an answer (the request may be half sent: nothing sensible can be said any more).
//!
//! Limits: HTTP routes only (raw TCP routes may be legitimately quiet and long-lived; they keep the
//! idle timeout). The rate is checked at window ends, so a slow connection is closed between one
//! and two windows after it became slow.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bytes moved by one connection (both directions).
#[derive(Debug, Default)]
pub struct Meter(AtomicU64);

impl Meter {
    /// Adds `n` bytes.
    pub fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Bytes moved so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why a connection was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Cut {
    #[error("request_timeout of {0:?} reached")]
    Lifetime(Duration),
    #[error("only {moved} bytes moved in {window:?} (minimum {needed})")]
    TooSlow { moved: u64, window: Duration, needed: u64 },
}

/// The limits of one route.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub request_timeout: Duration,
    pub min_bytes_per_second: u64,
    /// The rate window (the route's `idle_timeout`).
    pub window: Duration,
}

impl Limits {
    /// Bytes a window must move (0 when the rate rule is off).
    pub fn needed_per_window(&self) -> u64 {
        if self.min_bytes_per_second == 0 {
            return 0;
        }
        let ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        (self.min_bytes_per_second.saturating_mul(ms) / 1000).max(1)
    }
}

/// Runs `work` unless a limit cuts it first; `None` when the work finished by itself.
pub async fn enforce<F: Future<Output = ()>>(limits: Limits, meter: &Meter, work: F) -> Option<Cut> {
    let needed = limits.needed_per_window();
    let watchdog = async {
        if needed == 0 {
            return std::future::pending::<Cut>().await;
        }
        let start = tokio::time::Instant::now() + limits.window;
        let mut tick = tokio::time::interval_at(start, limits.window);
        let mut before = 0;
        loop {
            tick.tick().await;
            let now = meter.get();
            let moved = now.saturating_sub(before);
            if moved < needed {
                return Cut::TooSlow { moved, window: limits.window, needed };
            }
            before = now;
        }
    };
    tokio::select! {
        _ = work => None,
        _ = tokio::time::sleep(limits.request_timeout) => Some(Cut::Lifetime(limits.request_timeout)),
        cut = watchdog => Some(cut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(min: u64) -> Limits {
        Limits {
            request_timeout: Duration::from_millis(300),
            min_bytes_per_second: min,
            window: Duration::from_millis(50),
        }
    }

    #[test]
    fn needed_bytes_per_window() {
        assert_eq!(limits(0).needed_per_window(), 0);
        assert_eq!(limits(1).needed_per_window(), 1);
        assert_eq!(limits(100).needed_per_window(), 5);
    }

    #[tokio::test]
    async fn lifetime_slow_and_finished() {
        let meter = Meter::default();
        let cut = enforce(limits(0), &meter, std::future::pending()).await;
        assert_eq!(cut, Some(Cut::Lifetime(Duration::from_millis(300))));
        let cut = enforce(limits(100), &meter, std::future::pending()).await;
        assert!(matches!(cut, Some(Cut::TooSlow { moved: 0, needed: 5, .. })), "{cut:?}");
        // Fast enough: 10 bytes every 10 ms keeps it alive until the lifetime ends.
        let feed = async {
            loop {
                meter.add(10);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let cut = enforce(limits(100), &meter, feed).await;
        assert!(matches!(cut, Some(Cut::Lifetime(_))), "{cut:?}");
        assert_eq!(enforce(limits(100), &meter, async {}).await, None);
    }
}
