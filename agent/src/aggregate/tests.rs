use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use super::*;
use crate::flow::{Direction, Endpoint, Protocol};

fn flow(cookie: u64, remote: &str, sent: u64, rcvd: u64, closed: bool) -> FlowRecord {
    let mut f = FlowRecord::test(Protocol::Tcp, cookie, closed);
    f.local = Endpoint::new("10.0.0.1".parse::<IpAddr>().expect("ip"), 40000 + cookie as u16);
    f.remote = Endpoint::new(remote.parse::<IpAddr>().expect("ip"), 443);
    (f.bytes_sent, f.bytes_received, f.packets_sent, f.packets_received) = (sent, rcvd, 1, 1);
    (f.pid, f.rtt_us, f.rtt_var_us) = (Some(1), Some(2_000), Some(1));
    f
}

/// An aggregator with room for `regular` series besides the `other` ones.
fn agg(regular: usize) -> Aggregator {
    Aggregator::new(
        AggregateSettings {
            max_series: OTHER_SLOTS + regular,
            series_idle_intervals: 3,
            labels: LabelGroups::default(),
            prices: Prices::default(),
            late_intervals: 2,
        },
        SystemTime::UNIX_EPOCH,
    )
}

fn t(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(s)
}

fn total_sent(a: &Aggregator) -> u64 {
    a.series().iter().map(|(_, v)| v.bytes_sent).sum()
}

#[test]
fn deltas_make_monotonic_series_equal_to_the_traffic() {
    let mut a = agg(10);
    a.observe(&flow(1, "10.0.0.2", 100, 10, false));
    let r = a.finish_interval(t(10));
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].bytes_sent, r[0].connections_opened), (100, 1));
    a.observe(&flow(1, "10.0.0.2", 250, 10, false));
    a.observe(&flow(2, "10.0.0.2", 5, 0, true));
    let r = a.finish_interval(t(20));
    assert_eq!(r[0].bytes_sent, 155, "150 more on flow 1, 5 on flow 2");
    assert_eq!((r[0].connections_opened, r[0].connections_closed), (1, 1));
    a.observe(&flow(1, "10.0.0.2", 300, 10, true));
    a.finish_interval(t(30));
    let s = a.series();
    assert_eq!(s.len(), 1, "one identity pair: client ports are not labels");
    assert_eq!(s[0].0.server_port, "443");
    assert_eq!((s[0].1.bytes_sent, s[0].1.connections_opened, s[0].1.connections_closed), (305, 2, 2));
    assert_eq!(s[0].1.rtt.count, 4);
}

#[test]
fn incoming_flows_are_labelled_with_the_local_server_port() {
    let mut a = agg(10);
    let mut f = flow(1, "10.0.0.2", 1, 1, true);
    f.direction = Direction::Incoming;
    f.local.port = 8080;
    f.remote.port = 51234;
    a.observe(&f);
    a.finish_interval(t(1));
    assert_eq!(a.series()[0].0.server_port, "8080");
}

#[test]
fn cardinality_is_capped_and_other_keeps_the_totals() {
    let mut a = agg(10);
    let mut expected = 0;
    for i in 0..5_000u64 {
        let remote = format!("10.1.{}.{}", i / 250, i % 250);
        let bytes = 1 + i % 7;
        expected += bytes;
        a.observe(&flow(i, &remote, bytes, 0, true));
    }
    a.finish_interval(t(10));
    let s = a.series();
    assert!(s.len() <= OTHER_SLOTS + 10, "{} series", s.len());
    assert!(s.iter().any(|(k, _)| k.remote_addr == OTHER));
    assert_eq!(total_sent(&a), expected);
    assert!(a.stats().series_folded >= 4_990);
}

#[test]
fn largest_new_series_are_admitted_first() {
    let mut a = agg(3);
    a.observe(&flow(1, "10.0.0.2", 10, 0, true));
    a.observe(&flow(2, "10.0.0.3", 1_000, 0, true));
    a.observe(&flow(3, "10.0.0.4", 500, 0, true));
    a.observe(&flow(4, "10.0.0.5", 1, 0, true));
    a.finish_interval(t(10));
    let remotes: Vec<String> = a.series().into_iter().map(|(k, _)| k.remote_addr).collect();
    assert!(remotes.contains(&"10.0.0.3".to_string()) && remotes.contains(&"10.0.0.4".to_string()));
    assert!(remotes.contains(&OTHER.to_string()));
    assert_eq!(total_sent(&a), 1_511);
}

#[test]
fn idle_series_expire_and_flows_are_forgotten_when_gone() {
    let mut a = agg(10);
    a.observe(&flow(1, "10.0.0.2", 10, 0, false));
    a.finish_interval(t(10));
    a.retain_flows(|_| false);
    assert_eq!(a.stats().flows_tracked, 1, "its closed record may still come");
    for i in 0..4 {
        a.finish_interval(t(20 + i));
        a.retain_flows(|_| false);
    }
    assert_eq!(a.stats().flows_tracked, 0, "gone for more than late_intervals");
    assert!(a.series().is_empty());
    assert_eq!(a.stats().series_expired, 1);
}

#[test]
fn failures_and_rtt_histogram() {
    let mut a = agg(10);
    let mut f = flow(1, "10.0.0.2", 0, 0, true);
    f.failure = Some(Failure::Refused);
    f.rtt_us = Some(0);
    a.observe(&f);
    a.observe(&flow(2, "10.0.0.2", 1, 1, true));
    let r = a.finish_interval(t(1));
    assert_eq!(r[0].connections_failed, 1);
    let s = a.series();
    assert_eq!(s[0].1.connections_failed.get(&Failure::Refused), Some(&1));
    assert_eq!(s[0].1.rtt.count, 1, "zero RTT (no sample) is not observed");
    assert_eq!(s[0].1.rtt.counts[4], 1, "2 ms falls in the 2.5 ms bucket");
}

/// Folding keeps each protocol/family/direction's totals apart (an earlier version evicted
/// the smallest series of any kind into the fold target, moving UDP bytes under TCP).
#[test]
fn folds_keep_totals_per_protocol_and_direction() {
    let mut a = agg(1);
    a.observe(&flow(1, "10.0.0.2", 7, 0, true));
    a.finish_interval(t(1));
    for i in 0..50u64 {
        let mut f = flow(100 + i, &format!("10.2.0.{}", i + 1), 10, 0, true);
        f.protocol = Protocol::Udp;
        a.observe(&f);
    }
    let mut tcp = flow(2, "10.0.0.3", 1_000, 0, true);
    tcp.direction = Direction::Incoming;
    a.observe(&tcp);
    a.finish_interval(t(2));
    let sum = |p: Protocol, d: Direction| -> u64 {
        a.series()
            .iter()
            .filter(|(k, _)| k.protocol == p && k.direction == d)
            .map(|(_, v)| v.bytes_sent)
            .sum()
    };
    assert_eq!(sum(Protocol::Udp, Direction::Outgoing), 500);
    assert_eq!(sum(Protocol::Tcp, Direction::Outgoing), 7);
    assert_eq!(sum(Protocol::Tcp, Direction::Incoming), 1_000);
    assert!(a.series().len() <= OTHER_SLOTS + 1);
}

/// A flood of short flows to distinct peers within one interval: the interval's working map
/// stays bounded, every byte is still counted, and every fold is counted.
#[test]
fn the_interval_map_stays_bounded_under_a_flood_of_distinct_peers() {
    const REGULAR: usize = 20;
    const FLOWS: u64 = 200_000;
    let mut a = agg(REGULAR);
    let max = OTHER_SLOTS + REGULAR;
    for i in 0..FLOWS {
        let peer = std::net::Ipv4Addr::from(0x0a00_0000 | i as u32).to_string();
        a.observe(&flow(i % 1_000, &peer, 3, 1, true));
        assert!(a.interval.len() <= 2 * max, "{} keys after {i} flows", a.interval.len());
    }
    let s = a.stats();
    assert_eq!(s.interval_folded, FLOWS - max as u64, "the first max_series keys are kept");
    let records = a.finish_interval(t(10));
    assert_eq!(records.iter().map(|r| r.bytes_sent).sum::<u64>(), 3 * FLOWS);
    assert_eq!(total_sent(&a), 3 * FLOWS, "totals exact");
    let s = a.stats();
    assert!(s.series as usize <= max, "{s:?}");
    assert_eq!(s.series_folded, FLOWS - REGULAR as u64, "{s:?}");
}

fn nat() -> std::sync::Arc<crate::flow::RemoteAws> {
    std::sync::Arc::new(crate::flow::RemoteAws {
        kind: crate::flow::OwnerKind::NatGateway,
        name: None,
        id: Some("nat-1".into()),
        vpc: None,
        subnet: None,
        availability_zone: None,
    })
}

fn names(a: &Aggregator) -> Vec<(String, u64, u64)> {
    a.series().iter().map(|(k, v)| (k.remote_name.clone(), v.connections_opened, v.bytes_sent)).collect()
}

#[test]
fn an_open_flow_whose_remote_is_being_looked_up_is_counted_once_named() {
    let mut a = agg(10);
    let mut f = flow(1, "10.0.0.9", 0, 0, false);
    f.labels_pending = true;
    a.observe(&f);
    assert!(a.finish_interval(t(1)).is_empty(), "the first count waits");
    assert_eq!(a.waiting_flows(), vec![FlowKey::Tcp(1)]);
    // The answer came: the next look counts the connection and every byte so far, named.
    let mut f = flow(1, "10.0.0.9", 100, 1, false);
    f.remote.aws = Some(nat());
    a.observe(&f);
    a.finish_interval(t(2));
    assert_eq!(names(&a), [("nat-1".to_string(), 1, 100)]);
    assert!(a.waiting_flows().is_empty());
    a.observe(&{
        let mut c = flow(1, "10.0.0.9", 100, 1, true);
        c.remote.aws = Some(nat());
        c
    });
    a.finish_interval(t(3));
    assert_eq!(names(&a), [("nat-1".to_string(), 1, 100)]);
}

#[test]
fn the_wait_is_bounded_and_a_close_ends_it() {
    let mut a = agg(10);
    let pending = |cookie, sent, closed| {
        let mut f = flow(cookie, "10.0.0.9", sent, 0, closed);
        f.labels_pending = true;
        f
    };
    // Still pending after late_intervals (2): counted as it is.
    a.observe(&pending(1, 10, false));
    a.finish_interval(t(1));
    a.observe(&pending(1, 20, false));
    a.finish_interval(t(2));
    assert!(a.series().is_empty());
    a.observe(&pending(1, 30, false));
    a.finish_interval(t(3));
    assert_eq!(names(&a), [(String::new(), 1, 30)]);
    // Closed while waiting: counted at once, whole.
    a.observe(&pending(2, 5, false));
    a.observe(&pending(2, 7, true));
    a.finish_interval(t(4));
    assert_eq!(names(&a), [(String::new(), 2, 37)]);
    assert!(a.waiting_flows().is_empty());
    // Gone from the table while waiting: forgotten.
    a.observe(&pending(3, 1, false));
    a.retain_flows(|_| false);
    assert!(a.waiting_flows().is_empty());
    assert_eq!(a.stats().flows_waiting_labels, 0);
}

#[test]
fn a_closed_record_that_comes_after_its_flow_left_the_table_counts_only_the_rest() {
    // The labeller can hold a closed flow back (its peer's labels) past an interval's end, when
    // the scan no longer lists it as open: the 500 MB flow of the cluster-map test counted
    // 36.7 MB twice that way.
    let mut a = agg(10);
    a.observe(&flow(1, "10.0.0.2", 36_700_160, 0, false));
    a.finish_interval(t(1));
    a.retain_flows(|_| false);
    a.observe(&flow(1, "10.0.0.2", 500_000_000, 7, true));
    a.finish_interval(t(2));
    let s = a.series();
    assert_eq!(
        (s[0].1.bytes_sent, s[0].1.connections_opened, s[0].1.connections_closed),
        (500_000_000, 1, 1)
    );
}
