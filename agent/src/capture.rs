//! `eddy-agent capture`: every flow seen during a time window, including the ones that
//! opened and closed inside it, labelled by the same pipeline as `run` ([`crate::pipeline`]:
//! conntrack, ECS identity of both ends, AWS context); [`WindowSink`] is its sink.
//!
//! The first scan takes a baseline of the flows already open; the window's records carry
//! counters relative to it (flows opened inside the window carry whole-connection totals).
//! Flows with no activity in the window are left out. When the window ends, every record goes
//! through the enrichers once more, so that answers that arrived during the window (AWS
//! lookups queued by the window's first connections) label all of them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::collector::{Batch, Observed};
use crate::flow::FlowRecord;
use crate::pipeline::Sink;
use crate::state::{Enrichers, Shared};
use crate::table::FlowKey;

/// Window settings.
pub struct CaptureSettings {
    pub duration: Duration,
    /// Flows kept for printing; beyond it new flows are counted, not kept (bounded memory).
    pub max_flows: usize,
}

/// The window's flows, and how many did not fit `max_flows`.
#[derive(Debug)]
pub struct Captured {
    pub flows: Vec<FlowRecord>,
    pub dropped: u64,
}

/// The sink of `capture`: a baseline at the first scan, then the window's flows until
/// `duration` has passed.
pub struct WindowSink {
    settings: CaptureSettings,
    clock: Arc<dyn Clock>,
    /// Open flows at the first scan (`None` until then).
    baseline: Option<HashMap<FlowKey, FlowRecord>>,
    start_ns: u64,
    deadline: Option<Instant>,
    /// Open flows as of the latest scan (the last one is read once the window ends).
    live: Vec<Observed>,
    window: Window,
    started: Option<Box<dyn FnOnce() + Send>>,
}

impl WindowSink {
    /// `started` is called once the baseline is taken.
    pub fn new(
        settings: CaptureSettings,
        clock: Arc<dyn Clock>,
        started: impl FnOnce() + Send + 'static,
    ) -> Self {
        let window = Window { max: settings.max_flows, ..Window::default() };
        WindowSink {
            settings,
            clock,
            baseline: None,
            start_ns: 0,
            deadline: None,
            live: Vec::new(),
            window,
            started: Some(Box::new(started)),
        }
    }

    /// The window's flows, relabelled by `enrichers` (see the module docs).
    pub fn finish(self, enrichers: &Enrichers) -> Captured {
        let WindowSink { baseline, start_ns, live, mut window, .. } = self;
        window.live(live, start_ns);
        let dropped = window.dropped;
        let mut flows = window.finish(&baseline.unwrap_or_default());
        for e in enrichers.all() {
            for f in &mut flows {
                e.enrich(f);
            }
        }
        Captured { flows, dropped }
    }
}

impl Sink for WindowSink {
    fn accept(&mut self, _shared: &Shared, batch: Batch, scan: bool) {
        if self.baseline.is_none() {
            // The first scan: what is open now is the baseline; what closed before is not ours.
            if !scan {
                return;
            }
            let live = batch.live.unwrap_or_default();
            self.baseline = Some(live.into_iter().map(|o| (FlowKey::of(&o.record), o.record)).collect());
            self.start_ns = self.clock.mono_now_ns();
            self.deadline = Some(Instant::now() + self.settings.duration);
            if let Some(started) = self.started.take() {
                started();
            }
            return;
        }
        self.window.closed(batch.closed);
        if let Some(live) = batch.live {
            self.live = live;
        }
    }

    fn done(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// Flows of the window, in the order they were first seen.
#[derive(Default)]
struct Window {
    order: Vec<FlowKey>,
    flows: HashMap<FlowKey, FlowRecord>,
    max: usize,
    dropped: u64,
}

impl Window {
    fn insert(&mut self, key: FlowKey, record: FlowRecord) {
        if self.flows.len() >= self.max {
            self.dropped += 1;
            return;
        }
        self.order.push(key);
        self.flows.insert(key, record);
    }

    fn closed(&mut self, closed: Vec<Observed>) {
        for o in closed {
            let key = FlowKey::of(&o.record);
            match self.flows.get_mut(&key) {
                // A UDP flow closed for idleness, then active again: add the parts.
                Some(prev) if matches!(key, FlowKey::Udp { .. }) => add(prev, &o.record),
                Some(prev) => *prev = o.record,
                None => self.insert(key, o.record),
            }
        }
    }

    fn live(&mut self, live: Vec<Observed>, start_ns: u64) {
        for o in live.into_iter().filter(|o| o.last_ns >= start_ns) {
            let key = FlowKey::of(&o.record);
            match self.flows.get_mut(&key) {
                Some(prev) if matches!(key, FlowKey::Udp { .. }) => {
                    add(prev, &o.record);
                    prev.closed_at = None;
                }
                Some(_) => {} // TCP: the closed record is final
                None => self.insert(key, o.record),
            }
        }
    }

    fn finish(mut self, baseline: &HashMap<FlowKey, FlowRecord>) -> Vec<FlowRecord> {
        self.order
            .iter()
            .filter_map(|k| {
                let mut r = self.flows.remove(k)?;
                if let Some(b) = baseline.get(k) {
                    r.bytes_sent = r.bytes_sent.saturating_sub(b.bytes_sent);
                    r.bytes_received = r.bytes_received.saturating_sub(b.bytes_received);
                    r.packets_sent = r.packets_sent.saturating_sub(b.packets_sent);
                    r.packets_received = r.packets_received.saturating_sub(b.packets_received);
                    r.retransmits = r.retransmits.saturating_sub(b.retransmits);
                }
                Some(r)
            })
            .collect()
    }
}

fn add(into: &mut FlowRecord, more: &FlowRecord) {
    into.bytes_sent += more.bytes_sent;
    into.bytes_received += more.bytes_received;
    into.packets_sent += more.packets_sent;
    into.packets_received += more.packets_received;
    into.closed_at = more.closed_at;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::collector::fake::FakeSource;
    use crate::flow::Protocol;
    use crate::pipeline::{LoopSettings, collect};

    fn obs(protocol: Protocol, cookie: u64, sent: u64, last_ns: u64, closed: bool) -> Observed {
        let mut record = FlowRecord::test(protocol, cookie, closed);
        (record.bytes_sent, record.bytes_received, record.packets_sent, record.packets_received) =
            (sent, sent * 2, 1, 1);
        Observed { record, last_ns }
    }

    fn run(batches: Vec<Batch>, clock_ns: u64) -> Vec<FlowRecord> {
        let source = FakeSource::new(batches);
        let settings = CaptureSettings { duration: Duration::from_millis(30), max_flows: 100 };
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = started.clone();
        let mut sink = WindowSink::new(settings, Arc::new(FakeClock::at(clock_ns)), move || {
            flag.store(true, std::sync::atomic::Ordering::SeqCst)
        });
        let shared = Arc::new(crate::pipeline::tests::shared());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let timing = LoopSettings {
            poll_interval: Duration::from_millis(10),
            export_interval: Duration::from_secs(60),
        };
        collect(Box::new(source), shared.clone(), &mut sink, timing, stop);
        assert!(started.load(std::sync::atomic::Ordering::SeqCst));
        let out = sink.finish(&shared.enrichers);
        assert_eq!(out.dropped, 0);
        out.flows
    }

    #[test]
    fn window_counts_are_relative_to_the_baseline() {
        let batches = vec![
            // Baseline: flow 1 open with 100 sent; a closed flow from before the window.
            Batch {
                closed: vec![obs(Protocol::Tcp, 9, 5, 1, true)],
                live: Some(vec![obs(Protocol::Tcp, 1, 100, 5, false)]),
            },
            // Inside: flow 2 opens and closes; flow 1 grows; flow 3 idle since before.
            Batch { closed: vec![obs(Protocol::Tcp, 2, 10, 20, true)], live: None },
        ];
        // Later polls (the fake returns empty batches) include the final scan.
        let out = run(batches, 10);
        let cookies: Vec<u64> = out.iter().map(|r| r.cookie).collect();
        assert_eq!(cookies, vec![2], "only the flow closed inside the window: {out:?}");
        assert_eq!(out[0].bytes_sent, 10);
    }

    #[test]
    fn live_flows_with_activity_are_reported_as_deltas() {
        let mut window = Window { max: 10, ..Window::default() };
        window.live(vec![obs(Protocol::Tcp, 1, 150, 20, false), obs(Protocol::Tcp, 3, 7, 5, false)], 10);
        let baseline = HashMap::from([(FlowKey::Tcp(1), obs(Protocol::Tcp, 1, 100, 5, false).record)]);
        let out = window.finish(&baseline);
        assert_eq!(out.len(), 1, "flow 3 had no activity in the window");
        assert_eq!((out[0].bytes_sent, out[0].bytes_received), (50, 100));
    }

    #[test]
    fn udp_flow_evicted_then_reopened_adds_up() {
        let mut window = Window { max: 10, ..Window::default() };
        window.closed(vec![obs(Protocol::Udp, 4, 10, 15, true)]);
        window.live(vec![obs(Protocol::Udp, 4, 3, 25, false)], 10);
        let out = window.finish(&HashMap::new());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].bytes_sent, 13);
        assert!(out[0].closed_at.is_none());
    }

    #[test]
    fn window_is_bounded_and_counts_what_did_not_fit() {
        let mut window = Window { max: 2, ..Window::default() };
        window.closed((1..=5).map(|c| obs(Protocol::Tcp, c, 1, 15, true)).collect());
        assert_eq!(window.dropped, 3);
        assert_eq!(window.finish(&HashMap::new()).len(), 2);
    }

    #[test]
    fn tcp_closed_record_wins_over_a_late_live_read() {
        let mut window = Window { max: 10, ..Window::default() };
        window.closed(vec![obs(Protocol::Tcp, 5, 10, 15, true)]);
        window.live(vec![obs(Protocol::Tcp, 5, 8, 14, false)], 10);
        let out = window.finish(&HashMap::new());
        assert_eq!(out[0].bytes_sent, 10);
        assert!(out[0].closed_at.is_some());
    }
}
