//! The one collection loop of both commands: a thread owns the [`FlowSource`], drains
//! closed flows every [`DRAIN_INTERVAL`], scans open flows every `poll_interval`, labels
//! every batch with the [`Enrichers`] chain (conntrack, local ECS identity and intra-host
//! peers through the [`Labeller`], remote ends), and hands it to a [`Sink`]: for `run`,
//! [`publish::Publish`] (flow table, aggregation, `/metrics`, OTLP, JSON lines); for
//! `capture`, the window of [`crate::capture`]. Collector health (`/healthz`, `/status`)
//! is kept here, the same for both.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use crate::collector::{Batch, FlowSource};
use crate::faults::PanicSite;

pub mod labeller;
pub mod publish;
pub mod scope;

pub use crate::state::{CollectorKind, CollectorState, Enrichers, ExportState, Shared};
use labeller::Labeller;
pub use publish::{Line, OUTPUT_QUEUE_BATCHES, Publish, write_jsonl};

/// How often the closed-connection ring buffer is drained.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// Where labelled batches go.
pub trait Sink {
    /// One poll's flows, labelled (`scan`: open flows were read too).
    fn accept(&mut self, shared: &Shared, batch: Batch, scan: bool);
    /// Every `export_interval`, and once more at the end.
    fn export(&mut self, _shared: &Shared) {}
    /// The sink has what it wants: the loop polls once more and ends.
    fn done(&self) -> bool {
        false
    }
}

/// Loop timing.
#[derive(Clone, Copy, Debug)]
pub struct LoopSettings {
    pub poll_interval: Duration,
    pub export_interval: Duration,
}

/// Runs until `stop` is set (or the sink is done), then polls once more, exports, and returns.
pub fn collect(
    mut source: Box<dyn FlowSource>,
    shared: Arc<Shared>,
    sink: &mut dyn Sink,
    settings: LoopSettings,
    stop: Arc<AtomicBool>,
) {
    let mut labeller = Labeller::new(settings.poll_interval);
    // Loading the programs parsed the kernel's BTF (tens of MiB, freed): give it back.
    crate::alloc::trim();
    let mut scope = shared.collector.scope.as_ref().map(|s| scope::CgroupScope::new(s.status().path));
    let mut next_scan = Instant::now();
    let mut next_export = Instant::now() + settings.export_interval;
    let c = &shared.collector;
    let _exited = ClearOnDrop(&c.collecting);
    loop {
        let stopping = stop.load(Ordering::SeqCst) || sink.done();
        let now = Instant::now();
        let scan = stopping || now >= next_scan;
        match source.poll(scan) {
            Ok(mut batch) => {
                if let Some(s) = scope.as_mut() {
                    s.retain_batch(&mut batch, now, stopping);
                }
                label(&shared, &mut labeller, &mut batch, now, stopping);
                sink.accept(&shared, batch, scan);
                count_dns(source.as_mut(), &shared, scope.as_mut(), now, scan, stopping);
                if scan {
                    if let (Some(s), Some(out)) = (&scope, &c.scope) {
                        s.publish(out);
                    }
                    *c.source.lock().unwrap_or_else(PoisonError::into_inner) = source.status();
                    *c.last_scan.lock().unwrap_or_else(PoisonError::into_inner) = Some(now);
                    c.ready.store(true, Ordering::SeqCst);
                    crate::faults::maybe_panic(PanicSite::Collector, "the collector thread");
                }
            }
            Err(e) => {
                c.poll_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "poll failed");
            }
        }
        c.heartbeat.beat();
        if scan {
            next_scan = now + settings.poll_interval;
        }
        if stopping || now >= next_export {
            next_export = now + settings.export_interval;
            sink.export(&shared);
            // What the interval's answers, batches and exports freed goes back to the kernel.
            crate::alloc::trim();
        }
        if stopping {
            break;
        }
        std::thread::sleep(DRAIN_INTERVAL);
    }
    drop(source); // detaches the programs
}

/// The enrichment chain on one batch (see [`Enrichers`]).
fn label(shared: &Shared, labeller: &mut Labeller, batch: &mut Batch, now: Instant, flush: bool) {
    let e = &shared.enrichers;
    if let Some(ct) = &e.conntrack {
        for o in batch.closed.iter_mut().chain(batch.live.iter_mut().flatten()) {
            ct.enrich(&mut o.record);
        }
    }
    let remote = e.remote();
    if e.local.is_some() || !remote.is_empty() {
        labeller.label(e.local.as_deref(), &remote, batch, now, flush);
        *shared.collector.labels.lock().unwrap_or_else(PoisonError::into_inner) = labeller.counts();
    }
}

/// Clears `collecting` when the collection thread ends, also by unwinding.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Feeds the DNS packets of the last poll (those in the cgroup scope) to the statistics; on
/// scans, expires unanswered queries. `flush`: the last poll (nothing may wait).
fn count_dns(
    source: &mut dyn FlowSource,
    shared: &Shared,
    scope: Option<&mut scope::CgroupScope>,
    now: Instant,
    scan: bool,
    flush: bool,
) {
    let mut packets = source.take_dns();
    if let Some(s) = scope {
        s.retain_dns(&mut packets, now, flush);
    }
    let Some(dns) = &shared.export.dns else { return };
    let mut t = dns.lock().unwrap_or_else(PoisonError::into_inner);
    for p in &packets {
        t.ingest(p, |p| crate::dns::client_label(shared.enrichers.local.as_deref(), p));
    }
    if scan {
        t.expire(crate::clock::Clock::mono_now_ns(&crate::clock::SystemClock));
    }
}

#[cfg(test)]
pub(crate) mod tests;
