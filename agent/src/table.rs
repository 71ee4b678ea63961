//! The flow table: the latest view of every open flow plus a bounded window of
//! recently closed ones, fed by collector [`Batch`]es and read by the API and
//! the JSON-lines output.
//!
//! Bounded: closed flows beyond `closed_flow_retention` are evicted from
//! memory (counted; they were already delivered to the outputs), and flows
//! waiting for the next JSON-lines export are capped (overflow counted).
//!
//! A scan updates open flows in place (no second copy of the table while a scan is
//! applied), and the table's memory shrinks again after a peak.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};

use serde::Serialize;

use crate::collector::{Batch, Observed};
use std::net::SocketAddr;

use crate::flow::{FlowRecord, Protocol};

/// Maps of the per-record path: keys come from the kernel (cookies, tuples); foldhash, seeded
/// per process, hashes them several times faster than SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// Identity of a flow across polls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowKey {
    /// TCP: the socket cookie (the tuple's local port can appear after the first event).
    Tcp(u64),
    /// UDP: socket and both ends.
    Udp { cookie: u64, local: SocketAddr, remote: SocketAddr },
}

impl FlowKey {
    pub fn of(r: &FlowRecord) -> Self {
        match r.protocol {
            Protocol::Tcp => FlowKey::Tcp(r.cookie),
            Protocol::Udp => FlowKey::Udp {
                cookie: r.cookie,
                local: r.local.socket_addr(),
                remote: r.remote.socket_addr(),
            },
        }
    }
}

/// What [`FlowTable::take_export`] hands out.
#[derive(Debug, Default)]
pub struct Export {
    pub closed: Vec<FlowRecord>,
    pub live: Vec<FlowRecord>,
}

impl Export {
    pub fn len(&self) -> usize {
        self.closed.len() + self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counters of the table itself, for `/status`.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TableStats {
    pub live_flows: u64,
    pub closed_retained: u64,
    pub closed_total: u64,
    /// Closed flows dropped from memory (not from the outputs) by `closed_flow_retention`.
    pub closed_evicted: u64,
    /// Closed flows that could not wait for the next JSON-lines export.
    pub export_overflow: u64,
}

/// An open flow as of the last scan.
#[derive(Debug)]
struct Live {
    flow: Observed,
    /// The scan that last saw it.
    scan: u64,
    /// `last_ns` when it was last exported: a flow is exported again when its scanned
    /// state changed (comparing with the export time instead would miss events that
    /// happened before an export but were scanned after it).
    exported_ns: Option<u64>,
}

/// Live and recently closed flows.
#[derive(Debug)]
pub struct FlowTable {
    /// Boxed: the map's slots (a third more than its entries) hold a key and a pointer, not a
    /// whole record each (10,000 open flows: 4.3 MiB instead of 5.8).
    live: FastMap<FlowKey, Box<Live>>,
    scans: u64,
    closed: VecDeque<Observed>,
    closed_tcp: FastSet<u64>,
    retention: usize,
    /// Closed since the last export; `None` when nothing exports.
    pending: Option<Vec<Observed>>,
    pending_cap: usize,
    stats: TableStats,
}

impl FlowTable {
    /// `export`: keep closed flows for [`FlowTable::take_export`].
    pub fn new(retention: usize, export: bool) -> Self {
        FlowTable {
            live: FastMap::default(),
            scans: 0,
            // Exactly the retention: a ring that cycles through more slots than it keeps touches
            // (and keeps resident) memory it does not need.
            closed: VecDeque::with_capacity(retention.min(MAX_PREALLOCATED)),
            closed_tcp: FastSet::default(),
            retention,
            pending: export.then(Vec::new),
            pending_cap: retention.max(100_000),
            stats: TableStats::default(),
        }
    }

    /// Applies one poll's result.
    pub fn apply(&mut self, batch: Batch) {
        self.apply_with(batch, |_| {});
    }

    /// [`apply`](Self::apply), handing every closed flow to `on_closed` once its labels are
    /// final. A socket's owner never changes, so a flow keeps the better of its labels
    /// ([`EcsLabels::keep_better`]): its process may have exited, or its peer's labels may be
    /// forgotten, by the time it is seen again or closes.
    pub fn apply_with(&mut self, batch: Batch, mut on_closed: impl FnMut(&FlowRecord)) {
        // Room first, so the ring never grows past the retention.
        let room = (self.closed.len() + batch.closed.len()).saturating_sub(self.retention);
        self.evict_closed(room.min(self.closed.len()));
        for mut o in batch.closed {
            let key = FlowKey::of(&o.record);
            if let Some(before) = self.live.remove(&key) {
                keep_better_labels(&mut o.record, &before.flow.record);
            }
            if let FlowKey::Tcp(cookie) = key {
                // The same close can be seen in the map and in the ring buffer: counted once.
                if !self.closed_tcp.insert(cookie) {
                    continue;
                }
            }
            on_closed(&o.record);
            self.stats.closed_total += 1;
            if let Some(p) = &mut self.pending {
                if p.len() < self.pending_cap {
                    p.push(o.clone());
                } else {
                    self.stats.export_overflow += 1;
                }
            }
            self.closed.push_back(o);
        }
        // A batch larger than the retention keeps only its newest.
        self.evict_closed(self.closed.len().saturating_sub(self.retention));
        if let Some(live) = batch.live {
            self.scans += 1;
            let scan = self.scans;
            for flow in live {
                let key = FlowKey::of(&flow.record);
                if matches!(key, FlowKey::Tcp(c) if self.closed_tcp.contains(&c)) {
                    continue;
                }
                match self.live.entry(key) {
                    Entry::Occupied(mut e) => {
                        let e = e.get_mut();
                        let mut flow = flow;
                        keep_better_labels(&mut flow.record, &e.flow.record);
                        e.flow = flow;
                        e.scan = scan;
                    }
                    Entry::Vacant(e) => {
                        e.insert(Box::new(Live { flow, scan, exported_ns: None }));
                    }
                }
            }
            self.live.retain(|_, e| e.scan == scan);
            // After a peak (a burst of connections), give the memory back.
            if self.live.capacity() > 4 * self.live.len().max(1024) {
                self.live.shrink_to(2 * self.live.len());
            }
        }
        self.stats.live_flows = self.live.len() as u64;
        self.stats.closed_retained = self.closed.len() as u64;
    }

    /// Forgets the `n` oldest closed flows (dropped in place, not moved out one by one).
    fn evict_closed(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        for old in self.closed.range(..n) {
            if let FlowKey::Tcp(c) = FlowKey::of(&old.record) {
                self.closed_tcp.remove(&c);
            }
        }
        self.closed.drain(..n);
        self.stats.closed_evicted += n as u64;
    }

    /// Open flows, then recently closed ones (oldest first).
    pub fn flows(&self) -> Vec<FlowRecord> {
        self.live.values().map(|e| &e.flow).chain(self.closed.iter()).map(|o| o.record.clone()).collect()
    }

    /// Up to `limit` flows for which `keep` holds (open ones first, then closed ones newest
    /// first), and how many match in all. Copies only what it returns.
    pub fn select(&self, keep: impl Fn(&FlowRecord) -> bool, limit: usize) -> (Vec<FlowRecord>, usize) {
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut total = 0;
        for o in self.live.values().map(|e| &e.flow).chain(self.closed.iter().rev()) {
            if keep(&o.record) {
                total += 1;
                if out.len() < limit {
                    out.push(o.record.clone());
                }
            }
        }
        (out, total)
    }

    /// Flows to export now: closed since the last export (kept only when the table
    /// was made with `export`), and open flows whose state changed since then.
    pub fn take_export(&mut self) -> Export {
        let closed = self
            .pending
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
            .into_iter()
            .map(|o| o.record)
            .collect();
        let mut live = Vec::new();
        for e in self.live.values_mut() {
            if e.exported_ns != Some(e.flow.last_ns) {
                live.push(e.flow.record.clone());
                e.exported_ns = Some(e.flow.last_ns);
            }
        }
        Export { closed, live }
    }

    /// Whether a flow is open (as of the last scan).
    pub fn is_live(&self, key: &FlowKey) -> bool {
        self.live.contains_key(key)
    }

    /// An open flow's record (as of the last scan).
    pub fn live_record(&self, key: &FlowKey) -> Option<&FlowRecord> {
        self.live.get(key).map(|e| &e.flow.record)
    }

    pub fn stats(&self) -> TableStats {
        self.stats
    }
}

/// Closed flows whose slots are allocated up front (a larger retention grows as it fills).
const MAX_PREALLOCATED: usize = 100_000;

/// Keeps `before`'s labels on `r` (the same socket, seen again) where they name more.
fn keep_better_labels(r: &mut FlowRecord, before: &FlowRecord) {
    crate::flow::EcsLabels::keep_better(&mut r.local.ecs, &before.local.ecs);
    crate::flow::EcsLabels::keep_better(&mut r.remote.ecs, &before.remote.ecs);
}

#[cfg(test)]
mod tests;
