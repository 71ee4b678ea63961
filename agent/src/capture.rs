//! `eddy-agent capture`: every flow seen during a time window, including the ones that
//! opened and closed inside it, labelled by the same pipeline as `run` ([`crate::pipeline`]:
//! conntrack, ECS identity of both ends, AWS context); [`WindowSink`] is its sink.
//!
//! The first scan takes a baseline of the flows already open; the window's records carry
//! counters relative to it (flows opened inside the window carry whole-connection totals).
//! Flows with no activity in the window are left out. When the window ends, every record held
//! goes through the enrichers once more, so that answers that arrived during the window (AWS
//! lookups queued by the window's first connections) label all of them.
//!
//! Memory is bounded by `hold_flows`: once that many closed flows are held, the oldest is
//! relabelled and printed at once (so it misses only answers that come later), and only its
//! key is kept (a bounded set) so that a duplicate of it is not printed again. Nothing is
//! dropped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
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
    /// Closed flows held until the window ends; beyond it the oldest are printed early.
    pub hold_flows: usize,
}

/// Keys of early-printed flows remembered per held flow (duplicates arrive within a poll).
const PRINTED_KEYS_PER_HELD: usize = 4;

/// What the window printed.
#[derive(Debug)]
pub struct Captured {
    /// Flows printed in all.
    pub flows: u64,
    /// Of those, printed before the window ended (the hold was full).
    pub early: u64,
}

/// The sink of `capture`: a baseline at the first scan, then the window's flows until
/// `duration` has passed, as JSON lines on `out`.
pub struct WindowSink {
    settings: CaptureSettings,
    clock: Arc<dyn Clock>,
    /// Counters of the flows open at the first scan (`None` until then).
    baseline: Option<HashMap<FlowKey, Counters>>,
    start_ns: u64,
    deadline: Option<Instant>,
    /// Open flows as of the latest scan (the last one is read once the window ends).
    live: Vec<Observed>,
    window: Window,
    started: Option<Box<dyn FnOnce() + Send>>,
    out: Printer,
}

impl WindowSink {
    /// `started` is called once the baseline is taken; records go to `out` as JSON lines.
    pub fn new(
        settings: CaptureSettings,
        clock: Arc<dyn Clock>,
        out: Box<dyn Write + Send>,
        started: impl FnOnce() + Send + 'static,
    ) -> Self {
        let window = Window::new(settings.hold_flows.max(1));
        WindowSink {
            settings,
            clock,
            baseline: None,
            start_ns: 0,
            deadline: None,
            live: Vec::new(),
            window,
            started: Some(Box::new(started)),
            out: Printer { out, flows: 0, error: None },
        }
    }

    /// Prints the window's remaining flows, relabelled by `enrichers` (see the module docs);
    /// the first write error, if any.
    pub fn finish(self, enrichers: &Enrichers) -> std::io::Result<Captured> {
        let WindowSink { baseline, start_ns, live, mut window, mut out, .. } = self;
        window.live(live, start_ns);
        let baseline = baseline.unwrap_or_default();
        for mut f in window.drain(&baseline) {
            relabel(&mut f, enrichers);
            out.print(&f);
        }
        out.flush()?;
        Ok(Captured { flows: out.flows, early: window.early })
    }
}

impl Sink for WindowSink {
    fn accept(&mut self, shared: &Shared, batch: Batch, scan: bool) {
        if self.baseline.is_none() {
            // The first scan: what is open now is the baseline; what closed before is not ours.
            if !scan {
                return;
            }
            let live = batch.live.unwrap_or_default();
            self.baseline =
                Some(live.iter().map(|o| (FlowKey::of(&o.record), Counters::of(&o.record))).collect());
            self.start_ns = self.clock.mono_now_ns();
            self.deadline = Some(Instant::now() + self.settings.duration);
            if let Some(started) = self.started.take() {
                started();
            }
            return;
        }
        self.window.closed(batch.closed);
        let baseline = self.baseline.as_ref();
        while let Some(mut f) = self.window.pop_over(baseline) {
            relabel(&mut f, &shared.enrichers);
            self.out.print(&f);
        }
        if let Some(live) = batch.live {
            self.live = live;
        }
    }

    fn done(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

fn relabel(f: &mut FlowRecord, enrichers: &Enrichers) {
    for e in enrichers.all() {
        e.enrich(f);
    }
}

/// JSON lines to the output; after a write error, nothing more (the error is reported at the end).
struct Printer {
    out: Box<dyn Write + Send>,
    flows: u64,
    error: Option<std::io::Error>,
}

impl Printer {
    fn print(&mut self, f: &FlowRecord) {
        if self.error.is_some() {
            return;
        }
        let line = serde_json::to_writer(&mut self.out, f)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        match line {
            Ok(()) => self.flows += 1,
            Err(e) => self.error = Some(e),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.error.take() {
            Some(e) => Err(e),
            None => self.out.flush(),
        }
    }
}

/// Flows of the window, in the order they were first seen: at most `hold` closed flows held,
/// the keys of those printed early remembered (at most [`PRINTED_KEYS_PER_HELD`] × `hold`).
struct Window {
    order: VecDeque<FlowKey>,
    flows: HashMap<FlowKey, FlowRecord>,
    hold: usize,
    printed: HashSet<FlowKey>,
    printed_order: VecDeque<FlowKey>,
    early: u64,
}

impl Window {
    fn new(hold: usize) -> Self {
        Window {
            order: VecDeque::new(),
            flows: HashMap::new(),
            hold,
            printed: HashSet::new(),
            printed_order: VecDeque::new(),
            early: 0,
        }
    }

    fn insert(&mut self, key: FlowKey, record: FlowRecord) {
        self.order.push_back(key);
        self.flows.insert(key, record);
    }

    /// A TCP flow already printed: its closed record was final.
    fn printed_tcp(&self, key: &FlowKey) -> bool {
        matches!(key, FlowKey::Tcp(_)) && self.printed.contains(key)
    }

    fn closed(&mut self, closed: Vec<Observed>) {
        for o in closed {
            let key = FlowKey::of(&o.record);
            if self.printed_tcp(&key) {
                continue; // the same close seen twice (map and ring buffer)
            }
            match self.flows.get_mut(&key) {
                // A UDP flow closed for idleness, then active again: add the parts.
                Some(prev) if matches!(key, FlowKey::Udp { .. }) => add(prev, &o.record),
                Some(prev) => *prev = o.record,
                None => self.insert(key, o.record),
            }
        }
    }

    /// The oldest held flow, out of the window and with its counters relative to `baseline`,
    /// while more than `hold` are held.
    fn pop_over(&mut self, baseline: Option<&HashMap<FlowKey, Counters>>) -> Option<FlowRecord> {
        while self.flows.len() > self.hold {
            let key = self.order.pop_front()?;
            let Some(mut r) = self.flows.remove(&key) else { continue };
            if let Some(b) = baseline.and_then(|b| b.get(&key)) {
                b.subtract_from(&mut r);
            }
            self.remember(key);
            self.early += 1;
            return Some(r);
        }
        None
    }

    fn remember(&mut self, key: FlowKey) {
        if self.printed.insert(key) {
            self.printed_order.push_back(key);
        }
        while self.printed_order.len() > PRINTED_KEYS_PER_HELD * self.hold {
            if let Some(old) = self.printed_order.pop_front() {
                self.printed.remove(&old);
            }
        }
    }

    fn live(&mut self, live: Vec<Observed>, start_ns: u64) {
        // One allocation for what the window may grow by, not a doubling (peak memory).
        self.flows.reserve(live.len());
        self.order.reserve(live.len());
        for o in live.into_iter().filter(|o| o.last_ns >= start_ns) {
            let key = FlowKey::of(&o.record);
            if self.printed_tcp(&key) {
                continue;
            }
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

    /// The held flows, in order and relative to `baseline`, each out of the window as it is
    /// taken (no second copy of them all).
    fn drain<'a>(
        &'a mut self,
        baseline: &'a HashMap<FlowKey, Counters>,
    ) -> impl Iterator<Item = FlowRecord> + 'a {
        std::iter::from_fn(move || {
            while let Some(k) = self.order.pop_front() {
                if let Some(mut r) = self.flows.remove(&k) {
                    if let Some(b) = baseline.get(&k) {
                        b.subtract_from(&mut r);
                    }
                    return Some(r);
                }
            }
            None
        })
    }
}

/// The counters of a flow open when the window started.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    bytes_sent: u64,
    bytes_received: u64,
    packets_sent: u64,
    packets_received: u64,
    retransmits: u32,
}

impl Counters {
    fn of(r: &FlowRecord) -> Self {
        Counters {
            bytes_sent: r.bytes_sent,
            bytes_received: r.bytes_received,
            packets_sent: r.packets_sent,
            packets_received: r.packets_received,
            retransmits: r.retransmits,
        }
    }

    /// Counters of the window: what `r` counted beyond these.
    fn subtract_from(&self, r: &mut FlowRecord) {
        r.bytes_sent = r.bytes_sent.saturating_sub(self.bytes_sent);
        r.bytes_received = r.bytes_received.saturating_sub(self.bytes_received);
        r.packets_sent = r.packets_sent.saturating_sub(self.packets_sent);
        r.packets_received = r.packets_received.saturating_sub(self.packets_received);
        r.retransmits = r.retransmits.saturating_sub(self.retransmits);
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
    use std::sync::Mutex;

    fn obs(protocol: Protocol, cookie: u64, sent: u64, last_ns: u64, closed: bool) -> Observed {
        let mut record = FlowRecord::test(protocol, cookie, closed);
        (record.bytes_sent, record.bytes_received, record.packets_sent, record.packets_received) =
            (sent, sent * 2, 1, 1);
        Observed { record, last_ns }
    }

    /// A `Write` whose bytes the test reads afterwards.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn records(&self) -> Vec<FlowRecord> {
            let bytes = self.0.lock().expect("lock").clone();
            String::from_utf8(bytes)
                .expect("utf-8")
                .lines()
                .map(|l| serde_json::from_str(l).expect("a record"))
                .collect()
        }
    }

    fn run(batches: Vec<Batch>, clock_ns: u64, hold_flows: usize) -> (Vec<FlowRecord>, Captured) {
        let source = FakeSource::new(batches);
        let settings = CaptureSettings { duration: Duration::from_millis(30), hold_flows };
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = started.clone();
        let lines = Lines::default();
        let mut sink = WindowSink::new(
            settings,
            Arc::new(FakeClock::at(clock_ns)),
            Box::new(lines.clone()),
            move || flag.store(true, std::sync::atomic::Ordering::SeqCst),
        );
        let shared = Arc::new(crate::pipeline::tests::shared());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let timing = LoopSettings {
            poll_interval: Duration::from_millis(10),
            export_interval: Duration::from_secs(60),
        };
        collect(Box::new(source), shared.clone(), &mut sink, timing, stop);
        assert!(started.load(std::sync::atomic::Ordering::SeqCst));
        let captured = sink.finish(&shared.enrichers).expect("printed");
        let records = lines.records();
        assert_eq!(captured.flows, records.len() as u64);
        (records, captured)
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
        let (out, captured) = run(batches, 10, 100);
        let cookies: Vec<u64> = out.iter().map(|r| r.cookie).collect();
        assert_eq!(cookies, vec![2], "only the flow closed inside the window: {out:?}");
        assert_eq!(out[0].bytes_sent, 10);
        assert_eq!(captured.early, 0);
    }

    #[test]
    fn a_full_hold_prints_the_oldest_early_and_loses_nothing() {
        let batches = vec![
            // Baseline: flow 1 open with 100 sent.
            Batch { closed: vec![], live: Some(vec![obs(Protocol::Tcp, 1, 100, 5, false)]) },
            // Flow 1 closes with 130 sent, then 4 short flows; flow 3's close is seen twice.
            Batch {
                closed: vec![
                    obs(Protocol::Tcp, 1, 130, 20, true),
                    obs(Protocol::Tcp, 2, 1, 20, true),
                    obs(Protocol::Tcp, 3, 2, 20, true),
                ],
                live: None,
            },
            Batch {
                closed: vec![
                    obs(Protocol::Tcp, 3, 2, 20, true),
                    obs(Protocol::Tcp, 4, 3, 20, true),
                    obs(Protocol::Tcp, 5, 4, 20, true),
                ],
                live: None,
            },
        ];
        let (out, captured) = run(batches, 10, 2);
        let got: Vec<(u64, u64)> = out.iter().map(|r| (r.cookie, r.bytes_sent)).collect();
        assert_eq!(got, vec![(1, 30), (2, 1), (3, 2), (4, 3), (5, 4)], "{out:?}");
        assert_eq!(captured.early, 3, "held 2 of 5");
    }

    #[test]
    fn live_flows_with_activity_are_reported_as_deltas() {
        let mut window = Window::new(10);
        window.live(vec![obs(Protocol::Tcp, 1, 150, 20, false), obs(Protocol::Tcp, 3, 7, 5, false)], 10);
        let baseline =
            HashMap::from([(FlowKey::Tcp(1), Counters::of(&obs(Protocol::Tcp, 1, 100, 5, false).record))]);
        let out: Vec<_> = window.drain(&baseline).collect();
        assert_eq!(out.len(), 1, "flow 3 had no activity in the window");
        assert_eq!((out[0].bytes_sent, out[0].bytes_received), (50, 100));
    }

    #[test]
    fn udp_flow_evicted_then_reopened_adds_up() {
        let mut window = Window::new(10);
        window.closed(vec![obs(Protocol::Udp, 4, 10, 15, true)]);
        window.live(vec![obs(Protocol::Udp, 4, 3, 25, false)], 10);
        let out: Vec<_> = window.drain(&HashMap::new()).collect();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].bytes_sent, 13);
        assert!(out[0].closed_at.is_none());
    }

    #[test]
    fn printed_keys_are_bounded() {
        let mut window = Window::new(1);
        window.closed((1..=20).map(|c| obs(Protocol::Tcp, c, 1, 15, true)).collect());
        let early: Vec<u64> = std::iter::from_fn(|| window.pop_over(None)).map(|r| r.cookie).collect();
        assert_eq!(early, (1..=19).collect::<Vec<_>>());
        assert_eq!(window.flows.len(), 1);
        assert_eq!(window.printed.len(), PRINTED_KEYS_PER_HELD);
        assert_eq!(window.printed_order.len(), PRINTED_KEYS_PER_HELD);
        // The newest printed keys are the ones remembered: a late duplicate of one is skipped.
        window.closed(vec![obs(Protocol::Tcp, 19, 1, 15, true)]);
        assert_eq!(window.flows.len(), 1);
    }

    #[test]
    fn tcp_closed_record_wins_over_a_late_live_read() {
        let mut window = Window::new(10);
        window.closed(vec![obs(Protocol::Tcp, 5, 10, 15, true)]);
        window.live(vec![obs(Protocol::Tcp, 5, 8, 14, false)], 10);
        let out: Vec<_> = window.drain(&HashMap::new()).collect();
        assert_eq!(out[0].bytes_sent, 10);
        assert!(out[0].closed_at.is_some());
    }

    #[test]
    fn a_write_error_is_reported_at_the_end() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "closed"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut p = Printer { out: Box::new(Broken), flows: 0, error: None };
        p.print(&obs(Protocol::Tcp, 1, 1, 1, true).record);
        p.print(&obs(Protocol::Tcp, 2, 1, 1, true).record);
        assert_eq!(p.flows, 0);
        assert_eq!(p.flush().err().map(|e| e.kind()), Some(std::io::ErrorKind::BrokenPipe));
    }
}
