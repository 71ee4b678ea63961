//! The bounded table of DNS statistics rows, one per (client, server, name, qtype).
//!
//! How: rows are grouped by name, so folding a name (see [`super::names`]) moves only that
//! name's rows, into its `other` rows (`name = other`, same client, server and qtype). That
//! never adds rows. When the table is full, a new row is not created: its update goes to an
//! overflow row `(other, other, other, qtype)`, at most [`OVERFLOW_SLOTS`] of them (one per
//! qtype, the last slot shared by every further qtype as `qtype = other`), kept inside the
//! cap, so totals stay exact. A row not updated for the idle time is dropped; the sweep runs
//! at most four times per idle time, never per packet.
//!
//! Limits: an expired row's totals leave `/dns` and `/metrics` with it (the `/status`
//! totals keep them); overflow rows never expire. Rows expire up to a quarter of the idle
//! time late.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::OTHER;
use super::hist::Histogram;

/// Overflow rows, at most (inside the row cap).
pub const OVERFLOW_SLOTS: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    pub client: String,
    pub server: String,
    pub name: String,
    pub qtype: String,
}

impl RowKey {
    fn split(self) -> (String, Sub) {
        (self.name, Sub { client: self.client, server: self.server, qtype: self.qtype })
    }
}

/// The rest of a row's key, under its name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Sub {
    client: String,
    server: String,
    qtype: String,
}

impl Sub {
    /// Overflow rows are the only ones whose server is not an address.
    fn is_overflow(&self) -> bool {
        self.server == OTHER
    }
}

#[derive(Clone, Debug, Default)]
pub struct Row {
    /// Changed since the last [`super::DnsTracker::take_changed`].
    pub dirty: bool,
    /// CLOCK_MONOTONIC ns of the last update.
    pub last_ns: u64,
    pub queries: u64,
    pub rcodes: BTreeMap<String, u64>,
    pub timeouts: u64,
    pub latency: Histogram,
}

impl Row {
    fn merge(&mut self, o: &Row) {
        self.dirty = true;
        self.last_ns = self.last_ns.max(o.last_ns);
        self.queries += o.queries;
        self.timeouts += o.timeouts;
        for (k, v) in &o.rcodes {
            *self.rcodes.entry(k.clone()).or_insert(0) += v;
        }
        self.latency.merge(&o.latency);
    }
}

/// At most `max` rows, overflow rows included.
#[derive(Debug)]
pub struct Rows {
    max: usize,
    idle_ns: u64,
    by_name: HashMap<String, HashMap<Sub, Row>>,
    len: usize,
    overflow: usize,
    next_sweep_ns: u64,
    /// Updates that went to an overflow row because the table was full.
    pub folded: u64,
    /// Rows dropped after the idle time.
    pub expired: u64,
}

impl Rows {
    /// `max` is raised to leave room for a regular row besides the overflow rows.
    pub fn new(max: usize, idle: Duration) -> Self {
        Rows {
            max: max.max(OVERFLOW_SLOTS + 1),
            idle_ns: u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX),
            by_name: HashMap::new(),
            len: 0,
            overflow: 0,
            next_sweep_ns: 0,
            folded: 0,
            expired: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn contains(&self, k: &RowKey) -> bool {
        self.by_name.get(&k.name).is_some_and(|m| {
            m.contains_key(&Sub {
                client: k.client.clone(),
                server: k.server.clone(),
                qtype: k.qtype.clone(),
            })
        })
    }

    /// The row of `k` (created if there is room, else the overflow row of its qtype, counted in
    /// `folded`), marked changed at `now_ns`, with the key it is stored under.
    pub fn update(&mut self, k: RowKey, now_ns: u64) -> (RowKey, &mut Row) {
        let k = if self.contains(&k) || self.len - self.overflow < self.max - OVERFLOW_SLOTS {
            k
        } else {
            self.folded += 1;
            self.overflow_key(k.qtype)
        };
        let (name, sub) = k.clone().split();
        let overflow = sub.is_overflow();
        let row = match self.by_name.entry(name).or_default().entry(sub) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                self.len += 1;
                self.overflow += usize::from(overflow);
                e.insert(Row::default())
            }
        };
        row.dirty = true;
        row.last_ns = row.last_ns.max(now_ns);
        (k, row)
    }

    /// The overflow row for `qtype`: its own while slots remain, else the shared `other` one.
    fn overflow_key(&self, qtype: String) -> RowKey {
        let key = |qtype| RowKey { client: OTHER.into(), server: OTHER.into(), name: OTHER.into(), qtype };
        let own = key(qtype);
        if self.contains(&own) || self.overflow < OVERFLOW_SLOTS - 1 { own } else { key(OTHER.into()) }
    }

    /// Moves the rows of `name` into its `other` rows (work: the rows moved).
    pub fn fold_name(&mut self, name: &str) {
        if name == OTHER {
            return;
        }
        let Some(moved) = self.by_name.remove(name) else { return };
        self.len -= moved.len();
        let other = self.by_name.entry(OTHER.to_string()).or_default();
        for (sub, row) in moved {
            match other.entry(sub) {
                Entry::Occupied(mut e) => e.get_mut().merge(&row),
                Entry::Vacant(e) => {
                    self.len += 1;
                    e.insert(row).dirty = true;
                }
            }
        }
    }

    /// Drops rows idle for longer than the idle time (a sweep at most every quarter of it).
    pub fn expire_idle(&mut self, now_ns: u64) {
        if now_ns < self.next_sweep_ns {
            return;
        }
        self.next_sweep_ns = now_ns.saturating_add((self.idle_ns / 4).max(1));
        let idle = self.idle_ns;
        let mut dropped = 0;
        self.by_name.retain(|_, rows| {
            let before = rows.len();
            rows.retain(|sub, r| sub.is_overflow() || now_ns.saturating_sub(r.last_ns) <= idle);
            dropped += before - rows.len();
            !rows.is_empty()
        });
        self.len -= dropped;
        self.expired += dropped as u64;
    }

    /// Every row with its key.
    pub fn iter(&self) -> impl Iterator<Item = (RowKey, &Row)> {
        self.by_name.iter().flat_map(|(name, rows)| rows.iter().map(move |(s, r)| (key(name, s), r)))
    }

    /// `f` of every row changed since the last call, which marks them unchanged.
    pub fn take_changed<T>(&mut self, mut f: impl FnMut(RowKey, &Row) -> T) -> Vec<T> {
        let mut out = Vec::new();
        for (name, rows) in &mut self.by_name {
            for (s, r) in rows.iter_mut().filter(|(_, r)| r.dirty) {
                r.dirty = false;
                out.push(f(key(name, s), r));
            }
        }
        out
    }
}

fn key(name: &str, s: &Sub) -> RowKey {
    RowKey {
        client: s.client.clone(),
        server: s.server.clone(),
        name: name.to_string(),
        qtype: s.qtype.clone(),
    }
}
