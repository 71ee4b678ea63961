//! Cgroup ids that a lookup did not find: the cgroup tree is walked again soon after a new
//! container appears, but not over and over for an id that no walk can find (a socket
//! whose cgroup was removed, or one created outside the mount the agent reads).
//!
//! A miss wakes the walker once per id. The walk takes the ids missed before it started;
//! those it does not find become *unresolved* and wake nobody again (the periodic walk
//! still looks for them, and forgets them once found). Both sets are bounded: pending ids
//! beyond [`MAX_PENDING`] wait for a walk already due; beyond [`MAX_UNRESOLVED`] the
//! unresolved set starts over (counted), which costs at most one extra walk.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Ids waiting for a walk, at most.
pub const MAX_PENDING: usize = 4_096;
/// Ids known not to be found by a walk, at most.
pub const MAX_UNRESOLVED: usize = 65_536;

#[derive(Debug, Default)]
struct Sets {
    pending: HashSet<u64>,
    unresolved: HashSet<u64>,
}

/// Miss bookkeeping shared by the lookups (collector thread) and the walker.
#[derive(Debug, Default)]
pub struct Misses {
    sets: Mutex<Sets>,
    wake: tokio::sync::Notify,
    lookups: AtomicU64,
    pending_full: AtomicU64,
    unresolved_reset: AtomicU64,
}

/// Counters for `/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MissCounts {
    /// Lookups of a cgroup id that the last walk had not seen.
    pub lookups: u64,
    /// Ids no walk since their first miss has found (they wake nobody).
    pub unresolved: u64,
    /// Misses not queued because [`MAX_PENDING`] ids already wait for a walk.
    pub pending_full: u64,
    /// Times the unresolved set reached [`MAX_UNRESOLVED`] and started over.
    pub unresolved_reset: u64,
}

impl Misses {
    fn sets(&self) -> std::sync::MutexGuard<'_, Sets> {
        self.sets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A lookup did not find `id`: wakes the walker unless `id` already waits for a walk or
    /// a walk after its first miss did not find it either.
    pub fn miss(&self, id: u64) {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let mut s = self.sets();
        if s.unresolved.contains(&id) || s.pending.contains(&id) {
            return;
        }
        if s.pending.len() >= MAX_PENDING {
            self.pending_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        s.pending.insert(id);
        drop(s);
        self.wake.notify_one();
    }

    /// The ids missed so far; called just before a walk starts.
    pub fn take_pending(&self) -> HashSet<u64> {
        std::mem::take(&mut self.sets().pending)
    }

    /// After a walk that started after `missed` were taken: those it did not `find` become
    /// unresolved; unresolved ids it found are forgotten.
    pub fn walked(&self, missed: HashSet<u64>, found: impl Fn(u64) -> bool) {
        let mut s = self.sets();
        s.unresolved.retain(|id| !found(*id));
        for id in missed.into_iter().filter(|id| !found(*id)) {
            if s.unresolved.len() >= MAX_UNRESOLVED {
                s.unresolved.clear();
                self.unresolved_reset.fetch_add(1, Ordering::Relaxed);
            }
            s.unresolved.insert(id);
        }
    }

    /// Returns once a miss asks for a walk (at once when one did since the last call).
    pub async fn wait(&self) {
        self.wake.notified().await;
    }

    pub fn counts(&self) -> MissCounts {
        MissCounts {
            lookups: self.lookups.load(Ordering::Relaxed),
            unresolved: self.sets().unresolved.len() as u64,
            pending_full: self.pending_full.load(Ordering::Relaxed),
            unresolved_reset: self.unresolved_reset.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn woken(m: &Misses) -> bool {
        tokio::time::timeout(Duration::from_millis(20), m.wait()).await.is_ok()
    }

    #[tokio::test]
    async fn an_id_no_walk_finds_wakes_the_walker_once() {
        let m = Misses::default();
        m.miss(7);
        m.miss(7);
        assert!(woken(&m).await, "first miss wakes");
        assert!(!woken(&m).await, "the second one of the same id does not");
        let missed = m.take_pending();
        m.walked(missed, |_| false);
        for _ in 0..100 {
            m.miss(7);
        }
        assert!(!woken(&m).await, "unresolved: no more walks");
        assert_eq!(m.counts(), MissCounts { lookups: 102, unresolved: 1, ..Default::default() });
        // A new id still wakes; once a walk finds 7 it is forgotten.
        m.miss(8);
        assert!(woken(&m).await);
        let missed = m.take_pending();
        m.walked(missed, |id| id == 7 || id == 8);
        assert_eq!(m.counts().unresolved, 0);
    }

    #[tokio::test]
    async fn a_miss_during_a_walk_waits_for_the_next_one() {
        let m = Misses::default();
        m.miss(1);
        assert!(woken(&m).await);
        let missed = m.take_pending();
        m.miss(2); // the walk has started: it may not see 2's cgroup
        m.walked(missed, |_| false);
        assert!(woken(&m).await, "2 asks for another walk");
        assert_eq!(m.take_pending(), HashSet::from([2]));
    }

    #[test]
    fn both_sets_are_bounded() {
        let m = Misses::default();
        for id in 0..(MAX_PENDING as u64 + 10) {
            m.miss(id);
        }
        assert_eq!(m.counts().pending_full, 10);
        let missed = m.take_pending();
        m.walked(missed, |_| false);
        assert_eq!(m.counts().unresolved, MAX_PENDING as u64);
        for round in 0..(MAX_UNRESOLVED / MAX_PENDING) as u64 {
            for id in 0..MAX_PENDING as u64 {
                m.miss((round + 1) << 32 | id);
            }
            let missed = m.take_pending();
            m.walked(missed, |_| false);
        }
        let c = m.counts();
        assert!(c.unresolved <= MAX_UNRESOLVED as u64 && c.unresolved_reset == 1, "{c:?}");
    }
}
