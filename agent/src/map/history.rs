//! The agent's own source of the map: the series deltas of every aggregation interval, kept in
//! one-minute buckets for the longest window (an hour), so that `/api/map?window=5m` sums the
//! buckets that overlap the last five minutes.
//!
//! Bounded: at most [`MAX_ROWS`] rows in all buckets. A bucket that would pass the bound takes
//! new keys into their `other` series (exact totals, counted in `folded`); when the bound is
//! still passed, the oldest buckets go first (counted in `trimmed`), and the map then covers
//! less than the window (`covered_seconds` says how much).
//!
//! Limits: a window's edge is a bucket's: `window=1m` covers one or two buckets (up to two
//! minutes, said in `covered_seconds`); traffic of the interval in progress is not in it yet.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::aggregate::{Interval, Prices, SeriesKey, SeriesValues};

/// Length of a bucket.
pub const BUCKET: Duration = Duration::from_secs(60);
/// How long buckets are kept (the longest window, plus one bucket).
pub const KEEP: Duration = Duration::from_secs(3600 + 60);
/// Rows (series × bucket) kept in all.
pub const MAX_ROWS: usize = 8192;

struct Bucket {
    start: SystemTime,
    rows: HashMap<SeriesKey, SeriesValues>,
}

/// Counters of the history, for `/status` (`map`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HistoryStats {
    pub buckets: u64,
    pub rows: u64,
    pub max_rows: u64,
    /// Deltas of new keys folded into `other` because the rows were at their bound.
    pub folded: u64,
    /// Buckets dropped before their time to stay within the bound.
    pub trimmed: u64,
}

/// Interval deltas by minute.
pub struct History {
    started: SystemTime,
    buckets: VecDeque<Bucket>,
    rows: usize,
    max_rows: usize,
    prices: Prices,
    stats: HistoryStats,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl History {
    pub fn new(started: SystemTime, prices: Prices) -> Self {
        History::bounded(started, prices, MAX_ROWS)
    }

    /// With another row bound (tests).
    pub fn bounded(started: SystemTime, prices: Prices, max_rows: usize) -> Self {
        History {
            started,
            buckets: VecDeque::new(),
            rows: 0,
            max_rows: max_rows.max(1),
            prices,
            stats: HistoryStats { max_rows: max_rows as u64, ..HistoryStats::default() },
        }
    }

    pub fn prices(&self) -> Prices {
        self.prices
    }

    /// Adds one closed interval's deltas.
    pub fn add(&mut self, interval: &Interval) {
        let fresh = match self.buckets.back() {
            Some(b) => interval.start.duration_since(b.start).is_ok_and(|d| d >= BUCKET),
            None => true,
        };
        if fresh {
            self.buckets.push_back(Bucket { start: interval.start, rows: HashMap::new() });
        }
        self.expire(interval.end);
        let Some(bucket) = self.buckets.back_mut() else { return };
        for (k, v) in &interval.deltas {
            if let Some(row) = bucket.rows.get_mut(k) {
                row.add(v);
                continue;
            }
            let key = if self.rows >= self.max_rows && !k.is_other() {
                self.stats.folded += 1;
                k.other()
            } else {
                k.clone()
            };
            let row = bucket.rows.entry(key).or_insert_with(|| {
                self.rows += 1;
                SeriesValues::default()
            });
            row.add(v);
        }
        // Over the bound (only `other` rows pass it): the oldest buckets go.
        while self.rows > self.max_rows && self.buckets.len() > 1 {
            if let Some(old) = self.buckets.pop_front() {
                self.rows -= old.rows.len();
                self.stats.trimmed += 1;
            }
        }
    }

    /// Drops buckets older than [`KEEP`].
    fn expire(&mut self, now: SystemTime) {
        while let Some(b) = self.buckets.front() {
            if now.duration_since(b.start).is_ok_and(|age| age > KEEP) {
                self.rows -= b.rows.len();
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    /// Every row of the buckets that overlap the `window` before `now`, summed per key, and the
    /// seconds they cover (from the oldest such bucket's start; at most a bucket more than the
    /// window, less while the agent has run for less).
    pub fn window(&self, now: SystemTime, window: Duration) -> (Vec<(SeriesKey, SeriesValues)>, f64) {
        let since = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut sum: HashMap<&SeriesKey, SeriesValues> = HashMap::new();
        let mut oldest = None;
        let mut end = now;
        for b in self.buckets.iter().rev() {
            if end <= since {
                break;
            }
            oldest = Some(b.start);
            end = b.start;
            for (k, v) in &b.rows {
                sum.entry(k).or_default().add(v);
            }
        }
        let from = oldest.unwrap_or(self.started.max(since));
        let covered = now.duration_since(from).unwrap_or_default();
        let rows = sum.into_iter().map(|(k, v)| (k.clone(), v)).collect();
        (rows, covered.as_secs_f64())
    }

    pub fn stats(&self) -> HistoryStats {
        HistoryStats { buckets: self.buckets.len() as u64, rows: self.rows as u64, ..self.stats }
    }
}
