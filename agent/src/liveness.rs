//! Liveness of the collector thread, for `/healthz` and `eddy-agent healthcheck`.
//!
//! What: the collector beats a [`Heartbeat`] after every completed poll (every
//! [`crate::pipeline::DRAIN_INTERVAL`], scans every `poll_interval`); `/healthz` answers 503 when
//! the last beat is older than [`stall_after`] (the thread is stuck: a blocked syscall, a
//! deadlock, a stopped thread) or when the thread has ended (normal stop, or a panic: the
//! panic hook then ends the process anyway, see [`crate::panic_hook`]).
//!
//! How: one atomic holding milliseconds since an origin [`Instant`]; reading it takes no lock,
//! so `/healthz` answers even when the collector is stuck holding a lock.
//!
//! Limits: a collector that loops without completing polls (e.g. stuck inside one scan for
//! longer than the threshold) is reported stalled; a collector that completes polls but
//! delivers nothing (e.g. programs detached underneath it) is not detected here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// A poll is overdue after this many poll intervals …
pub const STALL_INTERVALS: u32 = 3;

/// … and never sooner than this (drains, scans and enrichment can legitimately take a while).
pub const STALL_FLOOR: Duration = Duration::from_secs(5);

/// How long without a completed poll means stalled: max(3 × `poll_interval`, 5 s).
pub fn stall_after(poll_interval: Duration) -> Duration {
    poll_interval.saturating_mul(STALL_INTERVALS).max(STALL_FLOOR)
}

/// Time of the collector's last completed poll.
#[derive(Debug)]
pub struct Heartbeat {
    origin: Instant,
    /// Milliseconds from `origin` to the last beat.
    last_ms: AtomicU64,
    stall_after: Duration,
}

/// What `/healthz` answers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    Ok { last_poll_age_seconds: f64, stall_after_seconds: f64 },
    Stalled { last_poll_age_seconds: f64, stall_after_seconds: f64 },
    Stopped,
}

impl Health {
    pub fn is_ok(&self) -> bool {
        matches!(self, Health::Ok { .. })
    }

    /// One line for `/healthz` and the logs.
    pub fn reason(&self) -> String {
        match self {
            Health::Ok { .. } => "ok".into(),
            Health::Stalled { last_poll_age_seconds, stall_after_seconds } => format!(
                "collector stalled: no poll completed for {last_poll_age_seconds:.1}s (limit {stall_after_seconds:.1}s)"
            ),
            Health::Stopped => "collector stopped".into(),
        }
    }
}

impl Heartbeat {
    /// A heartbeat that counts as beaten now.
    pub fn new(stall_after: Duration) -> Self {
        Heartbeat { origin: Instant::now(), last_ms: AtomicU64::new(0), stall_after }
    }

    /// Records a completed poll.
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }

    fn beat_at(&self, now: Instant) {
        let ms = u64::try_from(now.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn stall_after(&self) -> Duration {
        self.stall_after
    }

    /// Health now, given whether the collector thread still runs.
    pub fn health(&self, collecting: bool) -> Health {
        self.health_at(Instant::now(), collecting)
    }

    fn health_at(&self, now: Instant, collecting: bool) -> Health {
        if !collecting {
            return Health::Stopped;
        }
        let last = self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        let age = now.saturating_duration_since(last);
        let (a, s) = (age.as_secs_f64(), self.stall_after.as_secs_f64());
        if age > self.stall_after {
            Health::Stalled { last_poll_age_seconds: a, stall_after_seconds: s }
        } else {
            Health::Ok { last_poll_age_seconds: a, stall_after_seconds: s }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_three_intervals_with_a_floor() {
        assert_eq!(stall_after(Duration::from_millis(200)), Duration::from_secs(5));
        assert_eq!(stall_after(Duration::from_secs(1)), Duration::from_secs(5));
        assert_eq!(stall_after(Duration::from_secs(10)), Duration::from_secs(30));
    }

    #[test]
    fn stale_beat_is_stalled_fresh_beat_is_ok_stopped_wins() {
        let h = Heartbeat::new(Duration::from_secs(5));
        let t0 = h.origin;
        assert!(h.health_at(t0 + Duration::from_secs(4), true).is_ok());
        let stalled = h.health_at(t0 + Duration::from_secs(6), true);
        assert!(matches!(stalled, Health::Stalled { .. }), "{stalled:?}");
        assert!(stalled.reason().contains("no poll completed for 6.0s (limit 5.0s)"), "{}", stalled.reason());
        h.beat_at(t0 + Duration::from_secs(5));
        assert!(h.health_at(t0 + Duration::from_secs(6), true).is_ok());
        assert_eq!(h.health_at(t0 + Duration::from_secs(6), false), Health::Stopped);
        // A late beat from an older instant never moves the heartbeat back.
        h.beat_at(t0);
        assert!(h.health_at(t0 + Duration::from_secs(9), true).is_ok());
    }
}
