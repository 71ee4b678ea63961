use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::publish::Outputs;
use super::*;
use crate::aggregate::AggregateSettings;
use crate::collector::fake::FakeSource;
use crate::collector::{Batch, Observed};
use crate::flow::FlowRecord;
use crate::flow::{Direction, Protocol};
use crate::preflight::KernelInfo;
use crate::table::FlowTable;

fn record(cookie: u64) -> FlowRecord {
    let mut r = FlowRecord::test(Protocol::Tcp, cookie, true);
    (r.direction, r.bytes_sent, r.bytes_received, r.packets_sent, r.packets_received) =
        (Direction::Incoming, 5, 6, 1, 1);
    r
}

/// Export once, at stop (the interval is longer than the test).
const TIMING: LoopSettings =
    LoopSettings { poll_interval: Duration::from_secs(1), export_interval: Duration::from_secs(60) };

fn publish(tx: std::sync::mpsc::SyncSender<Vec<Line>>) -> Publish {
    Publish::new(Outputs {
        output: Some(tx),
        aggregate: AggregateSettings {
            max_series: 20,
            series_idle_intervals: 10,
            labels: Default::default(),
            prices: Default::default(),
            late_intervals: 2,
        },
        otlp: None,
    })
}

fn kernel() -> KernelInfo {
    KernelInfo { release: "test".into(), btf: true, cgroup2: None, cgroup2_mounted_by_agent: false }
}

/// Shared state of a fake collector, no enrichers, a small table.
pub(crate) fn shared() -> Shared {
    let collector = CollectorState::new(
        CollectorKind::Fake,
        kernel(),
        crate::liveness::Heartbeat::new(crate::liveness::STALL_FLOOR),
    );
    Shared::new(collector, Enrichers::default(), ExportState::new(FlowTable::new(10, true)))
}

#[test]
fn stop_flushes_closed_flows_to_the_output() {
    let source = FakeSource::new([Batch {
        closed: vec![Observed { record: record(1), last_ns: 1 }],
        live: Some(vec![]),
    }]);
    let shared = Arc::new(shared());
    let (tx, rx) = std::sync::mpsc::sync_channel(OUTPUT_QUEUE_BATCHES);
    let stop = Arc::new(AtomicBool::new(true));
    collect(Box::new(source), shared.clone(), &mut publish(tx), TIMING, stop);
    let mut buf = Vec::new();
    write_jsonl(rx, &mut buf, shared.clone());
    let text = String::from_utf8(buf).expect("utf8");
    let (aggregates, flows): (Vec<&str>, Vec<&str>) = text.lines().partition(|l| l.contains("\"record\":"));
    let flows: Vec<FlowRecord> = flows.iter().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(flows, vec![record(1)]);
    assert_eq!(aggregates.len(), 1);
    let agg: serde_json::Value = serde_json::from_str(aggregates[0]).expect("json");
    assert_eq!((agg["record"].as_str(), agg["bytes_sent"].as_u64()), (Some("aggregate"), Some(5)));
    assert_eq!(shared.export.series.lock().expect("lock").0.len(), 1, "series published for /metrics");
    assert!(shared.collector.ready.load(Ordering::SeqCst));
    assert!(!shared.collector.collecting.load(Ordering::SeqCst));
}

#[test]
fn full_output_queue_counts_drops_instead_of_blocking() {
    let batches =
        (0..3).map(|i| Batch { closed: vec![Observed { record: record(i), last_ns: 1 }], live: None });
    let source = FakeSource::new(batches);
    let shared = Arc::new(shared());
    let (tx, _rx) = std::sync::mpsc::sync_channel(0);
    let stop = Arc::new(AtomicBool::new(true));
    collect(Box::new(source), shared.clone(), &mut publish(tx), TIMING, stop);
    assert_eq!(shared.export.output_dropped.load(Ordering::SeqCst), 2, "a flow line and an aggregate line");
}
