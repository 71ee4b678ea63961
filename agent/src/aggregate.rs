//! Aggregation: flow records rolled up per interval into bounded series.
//!
//! A series is one identity pair — the ECS workloads of both ends (cluster, service, task
//! `family:revision`, container), the flow's scope, both ends' Availability Zones, the remote
//! AWS resource, and the addresses of ends without a name (the groups in `series_labels`,
//! see [`key`]) — with the server's port (the remote port of outgoing flows, the local port of
//! incoming ones; never an ephemeral client port), protocol, family and direction. No PIDs,
//! cookies or client ports become labels. Cross-AZ and NAT gateway bytes are also counted per
//! workload pair, priced ([`transfer`]). Each flow's counters are turned into deltas (the
//! aggregator remembers what it already counted per flow), so series counters are
//! monotonic totals since the agent started, exactly the sum of the traffic.
//!
//! Bounded: at most `max_series` series, [`OTHER_SLOTS`] of them kept for `other`
//! series. At the end of an interval, new series are admitted largest (bytes) first
//! while there is room; the rest are folded into the `other` series of their
//! protocol/family/direction (counted in `series_folded`), so totals still equal
//! the sum of all traffic, per protocol, family and direction. Series idle for `series_idle_intervals`
//! are dropped to make room again.
//!
//! The interval's working map is bounded too: closed flows are counted as they arrive, so a
//! flood of short flows to distinct peers would otherwise grow it without limit within one
//! interval. It takes at most `max_series` keys that are not series yet; beyond, a new key's
//! deltas go straight to its `other` series (counted in `series_folded` and, as a part of it,
//! `interval_folded`). So it holds at most 2 × `max_series` keys (the series themselves,
//! `other` ones included, plus the newcomers). The per-flow memory (`flows_tracked`) holds only
//! flows open in the flow table or seen in the current interval, so the table's bound bounds it.
//!
//! An open flow first seen while one of its ends is still being looked up waits (a few
//! intervals at most) before it is counted, so that its connection and its bytes land in the
//! same, named series ([`waiting`]).

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use serde::Serialize;

use crate::flow::{Failure, FlowRecord};
use crate::table::FlowKey;

mod interval;
mod key;
mod record;
pub mod transfer;
mod waiting;

use interval::{Identity, IntervalMap};
pub use key::{DEFAULT_GROUPS, LabelGroup, LabelGroups, SeriesKey, label};
pub use record::AggregateRecord;
use transfer::Transfers;
pub use transfer::{Prices, TransferRow, TransferSnapshot, Usd};
use waiting::Waiting;

/// Upper bounds of the RTT histogram, in microseconds.
pub const RTT_BUCKETS_US: [u64; 12] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000];

/// Label value of the folded series.
pub const OTHER: &str = "other";

/// Slots of the series cap kept for `other` series: one per protocol (2) × family (2) ×
/// direction (3), so folding never needs to evict anything.
pub const OTHER_SLOTS: usize = 12;

/// Record identities remembered per interval, per `max_series` (see [`interval`]).
const IDS_PER_MAX_SERIES: usize = 2;

/// Every series with its totals, as published for `/metrics`.
pub type SeriesSnapshot = std::sync::Arc<Vec<(SeriesKey, SeriesValues)>>;

/// RTT distribution (one observation per TCP flow per interval in which it was active).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Histogram {
    /// Non-cumulative counts per bucket of [`RTT_BUCKETS_US`], plus one for +Inf.
    pub counts: [u64; RTT_BUCKETS_US.len() + 1],
    pub sum_us: u64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, us: u64) {
        let i = RTT_BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(RTT_BUCKETS_US.len());
        self.counts[i] += 1;
        self.sum_us += us;
        self.count += 1;
    }

    fn add(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(o.counts) {
            *a += b;
        }
        self.sum_us += o.sum_us;
        self.count += o.count;
    }
}

/// Counters of one series.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SeriesValues {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub retransmits: u64,
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub connections_failed: BTreeMap<Failure, u64>,
    pub rtt: Histogram,
    /// Cross-AZ and NAT gateway bytes (see [`transfer`]).
    pub transfer: transfer::TransferValues,
}

impl SeriesValues {
    pub fn add(&mut self, o: &SeriesValues) {
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.packets_sent += o.packets_sent;
        self.packets_received += o.packets_received;
        self.retransmits += o.retransmits;
        self.connections_opened += o.connections_opened;
        self.connections_closed += o.connections_closed;
        for (f, n) in &o.connections_failed {
            *self.connections_failed.entry(*f).or_default() += n;
        }
        self.rtt.add(&o.rtt);
        self.transfer.add(&o.transfer);
    }

    fn bytes(&self) -> u64 {
        self.bytes_sent + self.bytes_received
    }
}

/// What was already counted of one flow.
#[derive(Clone, Copy, Debug, Default)]
struct Counted {
    bytes_sent: u64,
    bytes_received: u64,
    packets_sent: u64,
    packets_received: u64,
    retransmits: u64,
    interval: u64,
}

/// One closed aggregation interval: the deltas of every series that moved, sorted by key.
#[derive(Clone, Debug, PartialEq)]
pub struct Interval {
    pub start: SystemTime,
    pub end: SystemTime,
    pub deltas: Vec<(SeriesKey, SeriesValues)>,
}

impl Interval {
    /// The interval's JSON-lines records.
    pub fn records(&self, prices: &Prices) -> Vec<AggregateRecord> {
        self.deltas
            .iter()
            .map(|(k, v)| AggregateRecord::new(k.clone(), v.clone(), prices, self.start, self.end))
            .collect()
    }
}

/// Counters of the aggregator itself.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct AggregateStats {
    pub series: u64,
    pub max_series: u64,
    /// New series folded into `other` because `max_series` was reached (at the end of an
    /// interval, or as they arrived when the interval's map was full).
    pub series_folded: u64,
    /// The part of `series_folded` folded as they arrived: the interval already had
    /// `max_series` new keys.
    pub interval_folded: u64,
    /// Series dropped after `series_idle_intervals` without traffic.
    pub series_expired: u64,
    pub flows_tracked: u64,
    pub intervals: u64,
    /// Workload pairs with cross-AZ or NAT gateway bytes (`eddy_cross_az_bytes_total`, ...).
    pub transfer_pairs: u64,
    /// New pairs folded into the `other` pair because `max_series` pairs existed.
    pub transfer_folded: u64,
    /// Open flows whose first count waits for labels that are coming (see [`waiting`]).
    pub flows_waiting_labels: u64,
    /// Flows counted without waiting because the wait was full.
    pub labels_wait_full: u64,
}

/// Aggregator settings.
#[derive(Clone, Copy, Debug)]
pub struct AggregateSettings {
    pub max_series: usize,
    pub series_idle_intervals: u64,
    /// Which labels make a series (`series_labels`).
    pub labels: LabelGroups,
    /// Transfer prices (`[cost]`).
    pub prices: Prices,
    /// Intervals the aggregator waits at most for what comes late ([`late_intervals`]): an open
    /// flow's labels still being looked up, before its first count ([`waiting`]); the closed
    /// record of a flow no longer among the open ones (it may wait for its peer's labels),
    /// before what was counted of the flow is forgotten. 0: waits for neither.
    pub late_intervals: u64,
}

/// How long the aggregator waits at most for what comes late (see [`AggregateSettings`]).
pub const LATE: std::time::Duration = std::time::Duration::from_secs(10);

/// [`LATE`] in intervals of `export_interval` (at least one).
pub fn late_intervals(export_interval: std::time::Duration) -> u64 {
    let each = export_interval.as_millis().max(1);
    LATE.as_millis().div_ceil(each).max(1) as u64
}

/// Series totals since start, and the current interval's deltas.
#[derive(Debug)]
pub struct Aggregator {
    settings: AggregateSettings,
    counted: HashMap<FlowKey, Counted, foldhash::fast::RandomState>,
    /// Totals since start, with the interval each series last moved in.
    series: HashMap<SeriesKey, (SeriesValues, u64)>,
    /// The current interval's deltas per series (found by record identity, see [`interval`]).
    interval: IntervalMap,
    interval_no: u64,
    interval_start: SystemTime,
    stats: AggregateStats,
    /// This host's Availability Zone, when known (the local zone of flows without ECS zones).
    host_az: Option<String>,
    transfers: Transfers,
    waiting: Waiting,
}

impl Aggregator {
    pub fn new(settings: AggregateSettings, now: SystemTime) -> Self {
        Aggregator {
            settings,
            counted: HashMap::default(),
            series: HashMap::new(),
            interval: IntervalMap::new(IDS_PER_MAX_SERIES * settings.max_series),
            interval_no: 0,
            interval_start: now,
            stats: AggregateStats { max_series: settings.max_series as u64, ..Default::default() },
            host_az: None,
            transfers: Transfers::default(),
            waiting: Waiting::default(),
        }
    }

    /// Sets this host's Availability Zone (enhanced resolution's identity).
    pub fn set_host_az(&mut self, az: Option<String>) {
        if az != self.host_az {
            self.interval.forget_ids();
        }
        self.host_az = az;
    }

    pub fn host_az(&self) -> Option<&str> {
        self.host_az.as_deref()
    }

    /// Counts what is new in `r` since it was last observed. `closed` records are final.
    pub fn observe(&mut self, r: &FlowRecord) {
        let key = FlowKey::of(r);
        let prev = self.counted.get(&key).copied();
        if prev.is_none()
            && r.labels_pending
            && !r.is_closed()
            && self.waiting.wait(key, self.interval_no, self.settings.late_intervals)
        {
            return;
        }
        self.waiting.done(&key);
        let before = prev.unwrap_or_default();
        let d = SeriesValues {
            bytes_sent: r.bytes_sent.saturating_sub(before.bytes_sent),
            bytes_received: r.bytes_received.saturating_sub(before.bytes_received),
            packets_sent: r.packets_sent.saturating_sub(before.packets_sent),
            packets_received: r.packets_received.saturating_sub(before.packets_received),
            retransmits: u64::from(r.retransmits).saturating_sub(before.retransmits),
            connections_opened: u64::from(prev.is_none()),
            connections_closed: u64::from(r.is_closed()),
            connections_failed: r.failure.map(|f| BTreeMap::from([(f, 1)])).unwrap_or_default(),
            rtt: Histogram::default(),
            transfer: transfer::TransferValues::default(),
        };
        let mut d = d;
        let host_az = self.host_az.as_deref();
        if let Some((pair, t)) = transfer::classify(r, host_az, d.bytes_sent, d.bytes_received)
            && !t.is_zero()
        {
            d.transfer = t;
            self.transfers.add(pair, &t, self.settings.max_series, self.interval_no);
        }
        if let Some(rtt) = r.rtt_us.filter(|&v| v > 0) {
            d.rtt.observe(u64::from(rtt));
        }
        if r.is_closed() {
            // Most closed flows were never seen open (short-lived): nothing to forget.
            if prev.is_some() {
                self.counted.remove(&key);
            }
        } else {
            self.counted.insert(
                key,
                Counted {
                    bytes_sent: r.bytes_sent.max(before.bytes_sent),
                    bytes_received: r.bytes_received.max(before.bytes_received),
                    packets_sent: r.packets_sent.max(before.packets_sent),
                    packets_received: r.packets_received.max(before.packets_received),
                    retransmits: u64::from(r.retransmits).max(before.retransmits),
                    interval: self.interval_no,
                },
            );
        }
        let id = Identity::of(r, self.settings.labels);
        if self.interval.add_by_id(&id, &d) {
            return;
        }
        let key = SeriesKey::with(r, self.settings.labels, host_az);
        if self.interval.len() >= self.settings.max_series
            && !key.is_other()
            && !self.interval.contains_key(&key)
            && !self.series.contains_key(&key)
        {
            // Later records of the identity fold too: the key stays out of this interval.
            self.stats.series_folded += 1;
            self.stats.interval_folded += 1;
            self.interval.add(key.other(), None, &d);
            return;
        }
        self.interval.add(key, Some(id), &d);
    }

    /// Closes the interval and returns its records (one per series that moved).
    pub fn finish_interval(&mut self, now: SystemTime) -> Vec<AggregateRecord> {
        let prices = self.settings.prices;
        self.close_interval(now).records(&prices)
    }

    /// Closes the interval: merges its deltas into the series (admitting new series
    /// largest first, folding the rest), expires idle series, and returns the
    /// interval's deltas per series that moved.
    pub fn close_interval(&mut self, now: SystemTime) -> Interval {
        let mut deltas = self.interval.take();
        // Existing series first, then new ones by bytes, largest first.
        deltas.sort_by(|(ka, a), (kb, b)| {
            let (ea, eb) = (self.series.contains_key(ka), self.series.contains_key(kb));
            eb.cmp(&ea).then(b.bytes().cmp(&a.bytes())).then(ka.cmp(kb))
        });
        let mut moved: BTreeMap<SeriesKey, SeriesValues> = BTreeMap::new();
        // `other` series take at most OTHER_SLOTS of the cap: regular series get the rest.
        let room = self.settings.max_series.saturating_sub(OTHER_SLOTS);
        let mut regular = self.series.keys().filter(|k| !k.is_other()).count();
        for (key, d) in deltas {
            let key = if self.series.contains_key(&key) || key.is_other() {
                key
            } else if regular < room {
                regular += 1;
                key
            } else {
                self.stats.series_folded += 1;
                key.other()
            };
            let entry = self.series.entry(key.clone()).or_insert_with(|| (SeriesValues::default(), 0));
            entry.0.add(&d);
            entry.1 = self.interval_no;
            moved.entry(key).or_default().add(&d);
        }
        let idle = self.settings.series_idle_intervals;
        let no = self.interval_no;
        let before = self.series.len();
        self.series.retain(|k, (_, last)| k.is_other() || no.saturating_sub(*last) < idle);
        self.stats.series_expired += (before - self.series.len()) as u64;
        self.transfers.expire(no, idle);

        let interval = Interval { start: self.interval_start, end: now, deltas: moved.into_iter().collect() };
        self.interval_start = now;
        self.interval_no += 1;
        self.stats.intervals += 1;
        self.stats.series = self.series.len() as u64;
        self.stats.flows_tracked = self.counted.len() as u64;
        self.stats.transfer_pairs = self.transfers.len() as u64;
        self.stats.transfer_folded = self.transfers.folded;
        self.stats.flows_waiting_labels = self.waiting.len() as u64;
        self.stats.labels_wait_full = self.waiting.full;
        interval
    }

    /// Forgets flows that are not open (`is_open`) and were last seen `late_intervals` ago or
    /// more: they vanished with nothing left to count. (A closed flow's record removes it at
    /// once; one that left the open flows without it yet is kept until that record comes: the
    /// labeller can hold it back, and forgetting the flow would count it again, whole.)
    pub fn retain_flows(&mut self, is_open: impl Fn(&FlowKey) -> bool) {
        let (no, late) = (self.interval_no, self.settings.late_intervals);
        self.counted.retain(|k, c| no.saturating_sub(c.interval) <= late || is_open(k));
        self.waiting.retain(&is_open);
        self.stats.flows_tracked = self.counted.len() as u64;
        self.stats.flows_waiting_labels = self.waiting.len() as u64;
    }

    /// The open flows whose first count waits for labels (to be observed again, with the
    /// labels of the last scan, before the interval closes).
    pub fn waiting_flows(&self) -> Vec<FlowKey> {
        if self.waiting.is_empty() { Vec::new() } else { self.waiting.keys() }
    }

    /// Every series with its totals since start, sorted by labels.
    pub fn series(&self) -> Vec<(SeriesKey, SeriesValues)> {
        let mut v: Vec<_> = self.series.iter().map(|(k, (s, _))| (k.clone(), s.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Every workload pair with cross-AZ or NAT gateway bytes, its totals and costs.
    pub fn transfers(&self) -> Vec<TransferRow> {
        self.transfers.rows(&self.settings.prices)
    }

    pub fn stats(&self) -> AggregateStats {
        self.stats
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod identity_tests;
