//! The collection loop of `eddy-agent run`: one thread owns the [`FlowSource`],
//! drains closed flows every [`DRAIN_INTERVAL`], scans open flows every
//! `poll_interval`, feeds the [`FlowTable`] and the [`Aggregator`], closes an
//! aggregation interval every `export_interval` (series for `/metrics`), and hands
//! JSON-lines batches to a writer thread through a bounded channel (never
//! blocking collection; a batch that does not fit is counted as dropped).

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::aggregate::{AggregateRecord, AggregateSettings, AggregateStats, Aggregator, SeriesSnapshot};
use crate::collector::{FlowSource, SourceStatus};
use crate::enrich::Enricher;
use crate::faults::PanicSite;
use crate::flow::FlowRecord;
use crate::liveness::Heartbeat;
use crate::otlp::{Batch as OtlpBatch, OtlpQueue, OtlpStats};
use crate::preflight::KernelInfo;
use crate::table::FlowTable;
use crate::tags::{Tagged, Tags};

pub mod labeller;

use labeller::Labeller;

/// How often the closed-connection ring buffer is drained.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// Batches waiting for the JSON-lines writer.
pub const OUTPUT_QUEUE_BATCHES: usize = 64;

/// State shared by the collection thread and the API.
#[derive(Debug)]
pub struct Shared {
    pub table: Mutex<FlowTable>,
    pub source: Mutex<SourceStatus>,
    pub collector: &'static str,
    /// Why `collector = auto` chose this collector instead of eBPF (fallback reason).
    pub collector_reason: Option<String>,
    /// What the running collector cannot see.
    pub collector_limits: Option<&'static str>,
    pub kernel: KernelInfo,
    pub started: Instant,
    /// Set after the first complete scan.
    pub ready: AtomicBool,
    /// Cleared when the collection thread ends (normally or by a panic).
    pub collecting: AtomicBool,
    /// Beaten by the collection thread after every completed poll (`/healthz`).
    pub heartbeat: Heartbeat,
    /// API connection counters.
    pub api: crate::api::server::ApiStats,
    pub poll_errors: AtomicU64,
    pub last_scan: Mutex<Option<Instant>>,
    pub output_dropped: AtomicU64,
    pub output_errors: AtomicU64,
    /// Held flows and peer labels (see [`labeller`]), as of the last poll.
    pub labels: Mutex<labeller::LabelCounts>,
    /// Aggregated series as of the last interval, for `/metrics`.
    pub series: Mutex<(SeriesSnapshot, AggregateStats)>,
    /// OTLP exporter counters, when OTLP is on.
    pub otlp: Option<Arc<OtlpStats>>,
    /// ECS identity of local ends, when an ECS environment is detected.
    pub ecs: Option<Arc<dyn Enricher>>,
    /// ECS identity of remote ends through the ECS API, when on.
    pub remote: Option<Arc<dyn Enricher>>,
    /// AWS context of remote ends (enhanced resolution), when on.
    pub aws: Option<Arc<dyn Enricher>>,
    /// Static tags carried by every record.
    pub tags: Tags,
    /// FIPS mode: where exports go and how AWS API calls are made (absent when off).
    pub fips: Option<crate::fips::FipsStatus>,
    /// DNS statistics, when DNS monitoring is on.
    pub dns: Option<Mutex<crate::dns::DnsTracker>>,
    /// NAT translations from conntrack, when on.
    pub conntrack: Option<Arc<dyn Enricher>>,
    /// Capabilities kept after start-up and `no_new_privs` (see [`crate::privileges`]).
    pub privileges: Option<crate::privileges::PrivilegeStatus>,
}

impl Shared {
    pub fn new(table: FlowTable, collector: &'static str, kernel: KernelInfo) -> Self {
        Shared {
            table: Mutex::new(table),
            source: Mutex::new(SourceStatus::default()),
            collector,
            collector_reason: None,
            collector_limits: None,
            kernel,
            started: Instant::now(),
            ready: AtomicBool::new(false),
            collecting: AtomicBool::new(true),
            heartbeat: Heartbeat::new(crate::liveness::STALL_FLOOR),
            api: crate::api::server::ApiStats::default(),
            poll_errors: AtomicU64::new(0),
            last_scan: Mutex::new(None),
            output_dropped: AtomicU64::new(0),
            output_errors: AtomicU64::new(0),
            labels: Mutex::new(labeller::LabelCounts::default()),
            series: Mutex::new((Arc::new(Vec::new()), AggregateStats::default())),
            otlp: None,
            ecs: None,
            remote: None,
            aws: None,
            tags: Tags::default(),
            fips: None,
            dns: None,
            conntrack: None,
            privileges: None,
        }
    }

    pub fn table(&self) -> std::sync::MutexGuard<'_, FlowTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One JSON line: a flow record or an interval's aggregate.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Line {
    Flow(FlowRecord),
    Aggregate(AggregateRecord),
    Dns(crate::dns::DnsRecord),
}

/// Loop settings.
pub struct LoopSettings {
    pub poll_interval: Duration,
    pub export_interval: Duration,
    /// Where JSON-lines batches go (`None`: no output).
    pub output: Option<SyncSender<Vec<Line>>>,
    pub aggregate: AggregateSettings,
    /// Where series snapshots go for OTLP (`None`: off).
    pub otlp: Option<OtlpQueue>,
}

/// Runs until `stop` is set, then polls once more, exports, and returns.
pub fn collect(
    mut source: Box<dyn FlowSource>,
    shared: Arc<Shared>,
    settings: LoopSettings,
    stop: Arc<AtomicBool>,
) {
    let mut aggregator = Aggregator::new(settings.aggregate, SystemTime::now());
    let mut labeller = Labeller::default();
    let mut next_scan = Instant::now();
    let mut next_export = Instant::now() + settings.export_interval;
    let _exited = ClearOnDrop(&shared.collecting);
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let now = Instant::now();
        let scan = stopping || now >= next_scan;
        match source.poll(scan) {
            Ok(mut batch) => {
                if let Some(ct) = &shared.conntrack {
                    for o in batch.closed.iter_mut().chain(batch.live.iter_mut().flatten()) {
                        ct.enrich(&mut o.record);
                    }
                }
                let remote: Vec<&dyn Enricher> =
                    shared.remote.iter().chain(&shared.aws).map(|e| e.as_ref()).collect();
                if shared.ecs.is_some() || !remote.is_empty() {
                    labeller.label(shared.ecs.as_deref(), &remote, &mut batch, now, stopping);
                    *shared.labels.lock().unwrap_or_else(PoisonError::into_inner) = labeller.counts();
                }
                // Every closed flow is counted as it arrives (final counters).
                for o in &batch.closed {
                    aggregator.observe(&o.record);
                }
                shared.table().apply(batch);
                count_dns(source.as_mut(), &shared, scan);
                if scan {
                    *shared.source.lock().unwrap_or_else(PoisonError::into_inner) = source.status();
                    *shared.last_scan.lock().unwrap_or_else(PoisonError::into_inner) = Some(now);
                    shared.ready.store(true, Ordering::SeqCst);
                    crate::faults::maybe_panic(PanicSite::Collector, "the collector thread");
                }
            }
            Err(e) => {
                shared.poll_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "poll failed");
            }
        }
        shared.heartbeat.beat();
        if scan {
            next_scan = now + settings.poll_interval;
        }
        if stopping || now >= next_export {
            next_export = now + settings.export_interval;
            export(&shared, &mut aggregator, &settings);
        }
        if stopping {
            break;
        }
        std::thread::sleep(DRAIN_INTERVAL);
    }
    drop(source); // detaches the programs
}

/// Clears `collecting` when the collection thread ends, also by unwinding.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Feeds the DNS packets of the last poll to the statistics; on scans, expires unanswered queries.
fn count_dns(source: &mut dyn FlowSource, shared: &Shared, scan: bool) {
    let packets = source.take_dns();
    let Some(dns) = &shared.dns else { return };
    let mut t = dns.lock().unwrap_or_else(PoisonError::into_inner);
    for p in &packets {
        t.ingest(p, |p| crate::dns::client_label(shared.ecs.as_deref(), p));
    }
    if scan {
        t.expire(crate::clock::Clock::mono_now_ns(&crate::clock::SystemClock));
    }
}

/// Closes an aggregation interval: open flows active since the last one are
/// counted, the series snapshot for `/metrics` is replaced, and flows and
/// aggregates go to the JSON-lines writer.
fn export(shared: &Shared, aggregator: &mut Aggregator, settings: &LoopSettings) {
    let flows = {
        let mut table = shared.table();
        let flows = table.take_export();
        for r in &flows.live {
            aggregator.observe(r);
        }
        aggregator.retain_flows(|k| table.is_live(k));
        flows
    };
    let now = SystemTime::now();
    let aggregates = aggregator.finish_interval(now);
    let series: SeriesSnapshot = Arc::new(aggregator.series());
    let (dns_rows, dns_changed) = match &shared.dns {
        Some(d) => {
            let mut t = d.lock().unwrap_or_else(PoisonError::into_inner);
            let changed = if settings.output.is_some() { t.take_changed() } else { Vec::new() };
            (t.rows(), changed)
        }
        None => (Vec::new(), Vec::new()),
    };
    if let Some(q) = &settings.otlp {
        q.offer(OtlpBatch { series: series.clone(), time: now, dns: Arc::new(dns_rows) });
    }
    *shared.series.lock().unwrap_or_else(PoisonError::into_inner) = (series, aggregator.stats());
    let Some(tx) = &settings.output else { return };
    let lines: Vec<Line> = flows
        .closed
        .into_iter()
        .chain(flows.live)
        .map(Line::Flow)
        .chain(aggregates.into_iter().map(Line::Aggregate))
        .chain(dns_changed.into_iter().map(|row| Line::Dns(crate::dns::DnsRecord::new(row, now))))
        .collect();
    if lines.is_empty() {
        return;
    }
    let n = lines.len() as u64;
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(lines) {
        shared.output_dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// Writes batches as JSON lines to `out` until the channel closes.
pub fn write_jsonl(rx: Receiver<Vec<Line>>, mut out: impl Write, shared: Arc<Shared>) {
    for batch in rx {
        let mut ok = true;
        for r in &batch {
            match serde_json::to_writer(&mut out, &Tagged { record: r, tags: &shared.tags }) {
                Ok(()) => ok &= out.write_all(b"\n").is_ok(),
                Err(_) => ok = false,
            }
        }
        ok &= out.flush().is_ok();
        if !ok {
            shared.output_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::fake::FakeSource;
    use crate::collector::{Batch, Observed};
    use crate::flow::{Direction, Protocol};

    fn record(cookie: u64) -> FlowRecord {
        let mut r = FlowRecord::test(Protocol::Tcp, cookie, true);
        (r.direction, r.bytes_sent, r.bytes_received, r.packets_sent, r.packets_received) =
            (Direction::Incoming, 5, 6, 1, 1);
        r
    }

    /// Export once, at stop (the interval is longer than the test).
    fn settings(tx: std::sync::mpsc::SyncSender<Vec<Line>>) -> LoopSettings {
        LoopSettings {
            poll_interval: Duration::from_secs(1),
            export_interval: Duration::from_secs(60),
            output: Some(tx),
            aggregate: AggregateSettings { max_series: 20, series_idle_intervals: 10 },
            otlp: None,
        }
    }

    fn kernel() -> KernelInfo {
        KernelInfo { release: "test".into(), btf: true, cgroup2: None, cgroup2_mounted_by_agent: false }
    }

    #[test]
    fn stop_flushes_closed_flows_to_the_output() {
        let source = FakeSource::new([Batch {
            closed: vec![Observed { record: record(1), last_ns: 1 }],
            live: Some(vec![]),
        }]);
        let shared = Arc::new(Shared::new(FlowTable::new(10, true), "fake", kernel()));
        let (tx, rx) = std::sync::mpsc::sync_channel(OUTPUT_QUEUE_BATCHES);
        let stop = Arc::new(AtomicBool::new(true));
        let settings = settings(tx);
        collect(Box::new(source), shared.clone(), settings, stop);
        let mut buf = Vec::new();
        write_jsonl(rx, &mut buf, shared.clone());
        let text = String::from_utf8(buf).expect("utf8");
        let (aggregates, flows): (Vec<&str>, Vec<&str>) =
            text.lines().partition(|l| l.contains("\"record\":"));
        let flows: Vec<FlowRecord> = flows.iter().map(|l| serde_json::from_str(l).expect("json")).collect();
        assert_eq!(flows, vec![record(1)]);
        assert_eq!(aggregates.len(), 1);
        let agg: serde_json::Value = serde_json::from_str(aggregates[0]).expect("json");
        assert_eq!((agg["record"].as_str(), agg["bytes_sent"].as_u64()), (Some("aggregate"), Some(5)));
        assert_eq!(shared.series.lock().expect("lock").0.len(), 1, "series published for /metrics");
        assert!(shared.ready.load(Ordering::SeqCst));
        assert!(!shared.collecting.load(Ordering::SeqCst));
    }

    #[test]
    fn full_output_queue_counts_drops_instead_of_blocking() {
        let batches =
            (0..3).map(|i| Batch { closed: vec![Observed { record: record(i), last_ns: 1 }], live: None });
        let source = FakeSource::new(batches);
        let shared = Arc::new(Shared::new(FlowTable::new(10, true), "fake", kernel()));
        let (tx, _rx) = std::sync::mpsc::sync_channel(0);
        let stop = Arc::new(AtomicBool::new(true));
        let settings = settings(tx);
        collect(Box::new(source), shared.clone(), settings, stop);
        assert_eq!(shared.output_dropped.load(Ordering::SeqCst), 2, "a flow line and an aggregate line");
    }
}
