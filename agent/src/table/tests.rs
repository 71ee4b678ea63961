use super::*;

fn obs(protocol: Protocol, cookie: u64, port: u16, last_ns: u64, closed: bool) -> Observed {
    let mut record = FlowRecord::test(protocol, cookie, closed);
    record.local.port = port;
    (record.bytes_sent, record.bytes_received) = (1, 2);
    Observed { record, last_ns }
}

#[test]
fn closed_tcp_is_deduplicated_and_leaves_live() {
    let mut t = FlowTable::new(10, false);
    t.apply(Batch { closed: vec![], live: Some(vec![obs(Protocol::Tcp, 1, 1000, 5, false)]) });
    assert_eq!(t.stats().live_flows, 1);
    let mut handed = 0;
    t.apply_with(Batch { closed: vec![obs(Protocol::Tcp, 1, 1000, 6, true)], live: None }, |_| handed += 1);
    // Seen again (the map and the ring buffer): not handed to the aggregator a second time,
    // which would count the connection and its bytes twice.
    t.apply_with(
        Batch {
            closed: vec![obs(Protocol::Tcp, 1, 1000, 6, true)],
            live: Some(vec![obs(Protocol::Tcp, 1, 1000, 6, false)]),
        },
        |_| handed += 1,
    );
    assert_eq!(handed, 1);
    let s = t.stats();
    assert_eq!((s.live_flows, s.closed_total, s.closed_retained), (0, 1, 1));
    assert_eq!(t.flows().len(), 1);
    assert!(t.flows()[0].is_closed());
}

#[test]
fn udp_flow_can_reopen_after_idle_close() {
    let mut t = FlowTable::new(10, false);
    t.apply(Batch { closed: vec![obs(Protocol::Udp, 2, 53, 1, true)], live: None });
    t.apply(Batch { closed: vec![], live: Some(vec![obs(Protocol::Udp, 2, 53, 9, false)]) });
    assert_eq!(t.stats().live_flows, 1);
}

#[test]
fn retention_bounds_closed_flows_and_counts_evictions() {
    let mut t = FlowTable::new(3, false);
    let closed = (0..5).map(|i| obs(Protocol::Tcp, 100 + i, 2000 + i as u16, 1, true)).collect();
    t.apply(Batch { closed, live: None });
    let s = t.stats();
    assert_eq!((s.closed_retained, s.closed_evicted, s.closed_total), (3, 2, 5));
    let ports: Vec<u16> = t.flows().iter().map(|r| r.local.port).collect();
    assert_eq!(ports, vec![2002, 2003, 2004], "oldest evicted first");
}

#[test]
fn export_takes_closed_once_and_only_active_live_flows() {
    let mut t = FlowTable::new(10, true);
    t.apply(Batch {
        closed: vec![obs(Protocol::Tcp, 1, 1, 10, true)],
        live: Some(vec![obs(Protocol::Tcp, 2, 2, 10, false), obs(Protocol::Tcp, 3, 3, 30, false)]),
    });
    let first = t.take_export();
    assert_eq!((first.closed.len(), first.live.len()), (1, 2));
    assert!(t.take_export().is_empty(), "nothing changed since");
    t.apply(Batch {
        closed: vec![],
        live: Some(vec![obs(Protocol::Tcp, 2, 2, 10, false), obs(Protocol::Tcp, 3, 3, 31, false)]),
    });
    let again: Vec<u64> = t.take_export().live.iter().map(|r| r.cookie).collect();
    assert_eq!(again, vec![3], "only flow 3 changed");
}

/// An event that happened before an export but was scanned after it is still exported
/// (comparing event times with export times lost such updates).
#[test]
fn late_scanned_activity_is_exported() {
    let mut t = FlowTable::new(10, true);
    t.apply(Batch { closed: vec![], live: Some(vec![obs(Protocol::Udp, 7, 53, 100, false)]) });
    assert_eq!(t.take_export().live.len(), 1);
    // The next scan shows activity stamped at 150, before the previous export happened (say 200).
    t.apply(Batch { closed: vec![], live: Some(vec![obs(Protocol::Udp, 7, 53, 150, false)]) });
    assert_eq!(t.take_export().live.len(), 1);
}

#[test]
fn export_after_activity() {
    let mut t = FlowTable::new(10, true);
    t.apply(Batch { closed: vec![], live: Some(vec![obs(Protocol::Tcp, 2, 2, 10, false)]) });
    assert_eq!(t.take_export().len(), 1);
    t.apply(Batch { closed: vec![], live: Some(vec![obs(Protocol::Tcp, 2, 2, 25, false)]) });
    let e = t.take_export().live;
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].cookie, 2);
}

#[test]
fn export_overflow_is_counted() {
    let mut t = FlowTable::new(1, true);
    t.pending_cap = 2;
    let closed = (0..4).map(|i| obs(Protocol::Tcp, 10 + i, 1, 1, true)).collect();
    t.apply(Batch { closed, live: None });
    assert_eq!(t.stats().export_overflow, 2);
    assert_eq!(t.take_export().len(), 2);
}

#[test]
fn a_flow_keeps_the_labels_that_name_more() {
    use crate::flow::EcsLabels;
    use std::sync::Arc;
    let web = Arc::new(EcsLabels {
        task_arn: Some("arn:aws:ecs:us-east-1:1:task/c/t".into()),
        container_name: Some("web".into()),
        container_id: Some("c1".into()),
        ..Default::default()
    });
    let task_only =
        Arc::new(EcsLabels { container_id: None, container_name: Some("unknown".into()), ..(*web).clone() });
    let host = Arc::new(EcsLabels::host(None));
    let labelled = |cookie, closed, local: &Arc<EcsLabels>, remote: Option<&Arc<EcsLabels>>| {
        let mut o = obs(Protocol::Udp, cookie, 5000, 1, closed);
        o.record.local.ecs = Some(local.clone());
        o.record.remote.ecs = remote.cloned();
        o
    };
    let name = |r: &FlowRecord| {
        let n = |l: &Option<Arc<EcsLabels>>| l.as_ref().and_then(|l| l.container_name.clone());
        (n(&r.local.ecs), n(&r.remote.ecs))
    };
    let mut t = FlowTable::new(10, false);
    t.apply(Batch { closed: vec![], live: Some(vec![labelled(7, false, &web, Some(&web))]) });
    // The process exited: the next scan names only its task, and the peer is forgotten.
    t.apply(Batch { closed: vec![], live: Some(vec![labelled(7, false, &task_only, None)]) });
    assert_eq!(name(&t.flows()[0]), (Some("web".into()), Some("web".into())));
    // Better labels replace worse ones.
    t.apply(Batch { closed: vec![], live: Some(vec![labelled(8, false, &host, None)]) });
    t.apply(Batch { closed: vec![], live: Some(vec![labelled(8, false, &web, Some(&task_only))]) });
    assert_eq!(name(&t.flows()[0]), (Some("web".into()), Some("unknown".into())));
    // The close keeps them too, and what `on_closed` sees is final.
    let mut seen = Vec::new();
    t.apply_with(Batch { closed: vec![labelled(8, true, &host, None)], live: None }, |r| seen.push(name(r)));
    assert_eq!(seen, [(Some("web".into()), Some("unknown".into()))]);
    assert_eq!(EcsLabels::rank(None), 0);
    assert_eq!([&host, &task_only, &web].map(|l| EcsLabels::rank(Some(l))), [1, 2, 3]);
}
