//! Time: the kernel stamps events with CLOCK_MONOTONIC (`bpf_ktime_get_ns`);
//! records carry wall-clock times. [`Clock`] converts, and is faked in tests.

use std::time::{Duration, SystemTime};

/// Monotonic now and monotonic → wall-clock conversion.
pub trait Clock: Send + Sync {
    /// CLOCK_MONOTONIC now, in nanoseconds (the kernel programs' time base).
    fn mono_now_ns(&self) -> u64;
    /// Wall-clock time of a CLOCK_MONOTONIC instant.
    fn wall_at(&self, mono_ns: u64) -> SystemTime;
}

/// The real clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn mono_now_ns(&self) -> u64 {
        match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
            Ok(ts) => (ts.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec() as u64),
            Err(_) => 0,
        }
    }

    fn wall_at(&self, mono_ns: u64) -> SystemTime {
        let now_mono = self.mono_now_ns();
        let now = SystemTime::now();
        if mono_ns <= now_mono {
            now - Duration::from_nanos(now_mono - mono_ns)
        } else {
            now + Duration::from_nanos(mono_ns - now_mono)
        }
    }
}

/// A clock read once: monotonic instants convert with the offset of that moment. A batch of
/// records converts with one pair of clock reads instead of two per timestamp (the offset moves
/// only when the wall clock is stepped or slewed).
#[derive(Clone, Copy, Debug)]
pub struct Anchored {
    mono_ns: u64,
    wall: SystemTime,
}

impl Anchored {
    pub fn of(clock: &dyn Clock) -> Self {
        let mono_ns = clock.mono_now_ns();
        Anchored { mono_ns, wall: clock.wall_at(mono_ns) }
    }
}

impl Clock for Anchored {
    fn mono_now_ns(&self) -> u64 {
        self.mono_ns
    }

    fn wall_at(&self, mono_ns: u64) -> SystemTime {
        if mono_ns <= self.mono_ns {
            self.wall - Duration::from_nanos(self.mono_ns - mono_ns)
        } else {
            self.wall + Duration::from_nanos(mono_ns - self.mono_ns)
        }
    }
}

#[cfg(test)]
/// A clock that stands still until moved, for tests.
#[derive(Debug, Default)]
pub struct FakeClock {
    mono_ns: std::sync::atomic::AtomicU64,
}

#[cfg(test)]
impl FakeClock {
    /// Wall time of monotonic instant 0.
    pub const EPOCH: Duration = Duration::from_secs(1_700_000_000);

    pub fn at(mono_ns: u64) -> Self {
        FakeClock { mono_ns: mono_ns.into() }
    }

    pub fn advance(&self, by: Duration) {
        self.mono_ns.fetch_add(by.as_nanos() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
impl Clock for FakeClock {
    fn mono_now_ns(&self) -> u64 {
        self.mono_ns.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn wall_at(&self, mono_ns: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Self::EPOCH + Duration::from_nanos(mono_ns)
    }
}
