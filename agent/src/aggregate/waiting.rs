//! Open flows whose count waits for labels that are coming.
//!
//! A series is chosen by a flow's labels, and the flow's connection is counted in the series of
//! its first count. When an end is still being looked up as the flow is first seen open (an AWS
//! lookup in flight: `labels_pending`), counting it at once would put its connection in an
//! unnamed series and its later bytes in the named one: a NAT gateway edge with bytes and no
//! connection, and a stray unnamed edge. So the first count of such a flow waits, for at most
//! `late_intervals` intervals: it is looked at again at each interval's end (from the flow
//! table, with the labels of the last scan) and counted once its labels are complete, when it
//! closes, or when the wait is over, whichever comes first. Nothing is lost: counts are taken
//! from the flow's totals, so what it moved while waiting is in its first delta.
//!
//! Bounded: at most [`MAX_WAITING`] flows wait; beyond, a new one is counted at once (counted in
//! `labels_wait_full`).

use std::collections::HashMap;

use crate::table::FlowKey;

/// Open flows waiting for labels at most.
pub const MAX_WAITING: usize = 65_536;

/// The waiting flows, with the interval each began to wait in.
#[derive(Debug, Default)]
pub struct Waiting {
    flows: HashMap<FlowKey, u64, foldhash::fast::RandomState>,
    /// Flows counted at once because [`MAX_WAITING`] were waiting.
    pub full: u64,
}

impl Waiting {
    /// Whether the flow `key` is to wait (again) in interval `now`, at most `intervals` in all.
    pub fn wait(&mut self, key: FlowKey, now: u64, intervals: u64) -> bool {
        if let Some(&since) = self.flows.get(&key) {
            return now.saturating_sub(since) < intervals;
        }
        if self.flows.len() >= MAX_WAITING {
            self.full += 1;
            return false;
        }
        self.flows.insert(key, now);
        intervals > 0
    }

    /// The flow `key` was counted (or is gone).
    pub fn done(&mut self, key: &FlowKey) {
        if !self.flows.is_empty() {
            self.flows.remove(key);
        }
    }

    /// The waiting flows, to be looked at again.
    pub fn keys(&self) -> Vec<FlowKey> {
        self.flows.keys().copied().collect()
    }

    /// Forgets the flows that are no longer open.
    pub fn retain(&mut self, is_open: impl Fn(&FlowKey) -> bool) {
        self.flows.retain(|k, _| is_open(k));
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}
