//! The sink of `eddy-agent run`: every closed flow is counted by the [`Aggregator`] as it
//! arrives and every batch goes to the [`FlowTable`](crate::table::FlowTable); each
//! `export_interval` closes an aggregation interval (series for `/metrics` and OTLP) and hands
//! JSON-lines batches to a writer thread through a bounded channel (never blocking
//! collection; a batch that does not fit is counted as dropped).

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::{Shared, Sink};
use crate::aggregate::{AggregateRecord, AggregateSettings, Aggregator, SeriesSnapshot, TransferSnapshot};
use crate::collector::Batch;
use crate::flow::FlowRecord;
use crate::otlp::{Batch as OtlpBatch, OtlpQueue};
use crate::tags::Tagged;

/// Batches waiting for the JSON-lines writer.
pub const OUTPUT_QUEUE_BATCHES: usize = 64;

/// Where an interval's results go.
pub struct Outputs {
    /// Where JSON-lines batches go (`None`: no output).
    pub output: Option<SyncSender<Vec<Line>>>,
    pub aggregate: AggregateSettings,
    /// Where series snapshots go for OTLP (`None`: off).
    pub otlp: Option<OtlpQueue>,
}

/// The sink of `run`.
pub struct Publish {
    aggregator: Aggregator,
    outputs: Outputs,
    /// When this host's zone was last looked up (while it is unknown).
    az_checked: Option<Instant>,
}

/// How often this host's zone is looked up while enhanced resolution has not found it.
const AZ_RECHECK: Duration = Duration::from_secs(1);

impl Publish {
    pub fn new(outputs: Outputs) -> Self {
        Publish {
            aggregator: Aggregator::new(outputs.aggregate, SystemTime::now()),
            outputs,
            az_checked: None,
        }
    }

    /// Gives the aggregator this host's zone once enhanced resolution's identity has it (at most
    /// one lookup per [`AZ_RECHECK`] until then, unless `now_known`: records that carry a scope
    /// were labelled with the identity, so it is there; the zone of a host does not change).
    fn host_az(&mut self, shared: &Shared, now_known: bool) {
        if self.aggregator.host_az().is_some() || shared.enrichers.aws.is_none() {
            return;
        }
        let now = Instant::now();
        if !now_known && self.az_checked.is_some_and(|t| now.duration_since(t) < AZ_RECHECK) {
            return;
        }
        self.az_checked = Some(now);
        let health = crate::state::Enrichers::health(&shared.enrichers.aws);
        let az = health
            .as_ref()
            .and_then(|h| h.get::<crate::aws::enricher::AwsStatus>())
            .and_then(|s| s.identity.availability_zone.clone());
        if let Some(az) = &az {
            tracing::info!(availability_zone = %az, "series and transfers carry this host's zone from now on");
        }
        self.aggregator.set_host_az(az);
    }
}

impl Sink for Publish {
    fn accept(&mut self, shared: &Shared, batch: Batch, _scan: bool) {
        let scoped = batch.closed.iter().any(|o| o.record.scope.is_some());
        self.host_az(shared, scoped);
        // Every closed flow is counted as it arrives (final counters and labels).
        let aggregator = &mut self.aggregator;
        shared.table().apply_with(batch, |r| aggregator.observe(r));
    }

    fn export(&mut self, shared: &Shared) {
        // Live flows are counted now: with the zone, if it is known by now.
        self.host_az(shared, true);
        export(shared, &mut self.aggregator, &self.outputs);
    }
}

/// One JSON line: a flow record or an interval's aggregate.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Line {
    Flow(FlowRecord),
    Aggregate(Box<AggregateRecord>),
    Dns(crate::dns::DnsRecord),
}

/// Closes an aggregation interval: open flows active since the last one are
/// counted, the series snapshot for `/metrics` is replaced, and flows and
/// aggregates go to the JSON-lines writer.
fn export(shared: &Shared, aggregator: &mut Aggregator, settings: &Outputs) {
    let flows = {
        let mut table = shared.table();
        let flows = table.take_export();
        for r in &flows.live {
            aggregator.observe(r);
        }
        // Flows waiting for their labels, with those of the last scan (changed or not).
        for key in aggregator.waiting_flows() {
            if let Some(r) = table.live_record(&key) {
                aggregator.observe(r);
            }
        }
        aggregator.retain_flows(|k| table.is_live(k));
        flows
    };
    let now = SystemTime::now();
    let interval = aggregator.close_interval(now);
    let aggregates =
        if settings.output.is_some() { interval.records(&settings.aggregate.prices) } else { Vec::new() };
    shared.export.map.lock().unwrap_or_else(PoisonError::into_inner).add(&interval);
    let series: SeriesSnapshot = Arc::new(aggregator.series());
    let transfers: TransferSnapshot = Arc::new(aggregator.transfers());
    let (dns_rows, dns_changed) = match &shared.export.dns {
        Some(d) => {
            let mut t = d.lock().unwrap_or_else(PoisonError::into_inner);
            let changed = if settings.output.is_some() { t.take_changed() } else { Vec::new() };
            (t.rows(), changed)
        }
        None => (Vec::new(), Vec::new()),
    };
    if let Some(q) = &settings.otlp {
        q.offer(OtlpBatch {
            series: series.clone(),
            transfers: transfers.clone(),
            time: now,
            dns: Arc::new(dns_rows),
        });
    }
    *shared.export.series.lock().unwrap_or_else(PoisonError::into_inner) = (series, aggregator.stats());
    *shared.export.transfers.lock().unwrap_or_else(PoisonError::into_inner) = transfers;
    let Some(tx) = &settings.output else { return };
    let lines: Vec<Line> = flows
        .closed
        .into_iter()
        .chain(flows.live)
        .map(Line::Flow)
        .chain(aggregates.into_iter().map(|a| Line::Aggregate(Box::new(a))))
        .chain(dns_changed.into_iter().map(|row| Line::Dns(crate::dns::DnsRecord::new(row, now))))
        .collect();
    if lines.is_empty() {
        return;
    }
    let n = lines.len() as u64;
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(lines) {
        shared.export.output_dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// Writes batches as JSON lines to `out` until the channel closes.
pub fn write_jsonl(rx: Receiver<Vec<Line>>, mut out: impl Write, shared: Arc<Shared>) {
    for batch in rx {
        let mut ok = true;
        for r in &batch {
            match serde_json::to_writer(&mut out, &Tagged { record: r, tags: &shared.export.tags }) {
                Ok(()) => ok &= out.write_all(b"\n").is_ok(),
                Err(_) => ok = false,
            }
        }
        ok &= out.flush().is_ok();
        if !ok {
            shared.export.output_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}
