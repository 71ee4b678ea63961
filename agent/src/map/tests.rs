use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::history::History;
use super::model::{self, Context};
use super::query::{Group, MapQuery, QueryError};
use crate::aggregate::{Interval, Prices, SeriesKey, SeriesValues};
use crate::flow::{Direction, Failure, Family, Protocol};

fn key(direction: Direction, port: &str) -> SeriesKey {
    SeriesKey::bare(Protocol::Tcp, Family::Ipv4, direction, port.into())
}

/// web (prod, us-east-1a) → api (prod, us-east-1b) on 8080, as reported by web's agent.
fn web_to_api(direction: Direction) -> SeriesKey {
    let mut k = key(direction, "8080");
    let (web, api) = if direction == Direction::Incoming { ("api", "web") } else { ("web", "api") };
    let (web_az, api_az) = if direction == Direction::Incoming {
        ("us-east-1b", "us-east-1a")
    } else {
        ("us-east-1a", "us-east-1b")
    };
    k.scope = "cross-az".into();
    k.local_cluster = "prod".into();
    k.local_service = web.into();
    k.local_task = format!("{web}:3");
    k.local_container = web.into();
    k.local_az = web_az.into();
    k.remote_cluster = "prod".into();
    k.remote_service = api.into();
    k.remote_task = format!("{api}:7");
    k.remote_container = api.into();
    k.remote_az = api_az.into();
    k
}

fn values(sent: u64, received: u64, opened: u64) -> SeriesValues {
    SeriesValues {
        bytes_sent: sent,
        bytes_received: received,
        packets_sent: 10,
        packets_received: 5,
        connections_opened: opened,
        ..SeriesValues::default()
    }
}

fn ctx(covered: f64) -> Context {
    Context {
        source: "agent",
        prometheus_url: None,
        covered_seconds: covered,
        generated_at: "2026-12-05T00:00:00Z".into(),
        prices: Prices::default(),
    }
}

#[test]
fn both_ends_reporting_count_an_edge_once() {
    // web's agent: 1,000 B sent, 2,345 received over 4 connections; api's agent the same seen
    // from the other end (its received = web's sent).
    let rows = vec![
        (web_to_api(Direction::Outgoing), values(1_000, 2_345, 4)),
        (web_to_api(Direction::Incoming), values(2_345, 1_000, 4)),
    ];
    let m = model::build(&rows, &MapQuery::default(), &ctx(100.0));
    assert_eq!(m.edges.len(), 1, "{:#?}", m.edges);
    let e = &m.edges[0];
    assert_eq!((e.client.as_str(), e.server.as_str()), ("service:prod/web", "service:prod/api"));
    assert_eq!((e.bytes_client_to_server, e.bytes_server_to_client, e.connections), (1_000, 2_345, 4));
    assert_eq!(e.bytes_per_second_client_to_server, 10.0);
    assert!(e.cross_az);
    // 3,345 B × 2 sides × $0.01/GB = $0.0000000669.
    assert!((e.cost_usd - 0.0000000669).abs() < 1e-18, "{}", e.cost_usd);
    assert!((e.monthly_cost_usd - 0.0000000669 * 30.0 * 86_400.0 / 100.0).abs() < 1e-12);
    assert_eq!(
        m.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        ["service:prod/api", "service:prod/web"]
    );
    let web = &m.nodes[1];
    assert_eq!((web.bytes_out, web.bytes_in, web.az.as_deref()), (1_000, 2_345, Some("us-east-1a")));
    assert!(e.promql["bytes_client_to_server"].contains(
        "eddy_flow_sent_bytes_total{direction=\"outgoing\",local_cluster=\"prod\",local_service=\"web\",remote_cluster=\"prod\",remote_service=\"api\"}[5m]"
    ), "{}", e.promql["bytes_client_to_server"]);
    assert!(e.promql.contains_key("cost"));
}

#[test]
fn one_end_reporting_is_enough() {
    let rows = vec![(web_to_api(Direction::Incoming), values(2_345, 1_000, 4))];
    let m = model::build(&rows, &MapQuery::default(), &ctx(100.0));
    let e = &m.edges[0];
    assert_eq!(
        (e.client.as_str(), e.bytes_client_to_server, e.bytes_server_to_client),
        ("service:prod/web", 1_000, 2_345)
    );
    assert!(e.promql["bytes_client_to_server"].contains("direction=\"outgoing\""));
}

#[test]
fn aws_internet_unknown_and_failures() {
    let mut alb = key(Direction::Incoming, "80");
    alb.local_service = "web".into();
    alb.local_task = "web:3".into();
    alb.local_az = "us-east-1a".into();
    alb.remote_kind = "alb".into();
    alb.remote_name = "front".into();
    alb.remote_az = "us-east-1b".into();
    alb.scope = "cross-az".into();
    let mut nat = key(Direction::Outgoing, "443");
    nat.local_service = "web".into();
    nat.local_task = "web:3".into();
    nat.remote_kind = "nat_gateway".into();
    nat.remote_name = "nat-1".into();
    nat.scope = "same-az".into();
    let mut net = key(Direction::Outgoing, "443");
    net.local_service = "web".into();
    net.local_task = "web:3".into();
    net.remote_addr = "1.2.3.4".into();
    net.scope = "internet".into();
    let mut lost = key(Direction::Outgoing, "9");
    lost.local_service = "web".into();
    lost.local_task = "web:3".into();
    lost.remote_addr = "10.0.0.9".into();
    let mut failed = values(0, 0, 3);
    failed.connections_failed = BTreeMap::from([(Failure::Refused, 2), (Failure::Timeout, 1)]);
    let rows = vec![
        (alb, values(500, 100, 1)),
        (nat, values(1_000_000_000, 0, 1)),
        (net, values(10, 20, 1)),
        (lost, failed),
    ];
    let m = model::build(&rows, &MapQuery::default(), &ctx(60.0));
    let ids: Vec<(&str, &str)> = m.edges.iter().map(|e| (e.client.as_str(), e.server.as_str())).collect();
    assert_eq!(
        ids,
        [
            ("service:/web", "aws:nat_gateway/nat-1"),
            ("aws:alb/front", "service:/web"),
            ("service:/web", "internet"),
            ("service:/web", "unknown"),
        ]
    );
    // NAT: 10^9 B × $0.045/GB; same-az, so no inter-AZ charge.
    assert!((m.edges[0].cost_usd - 0.045).abs() < 1e-12);
    // ALB ↔ target across zones: not billed.
    assert!(m.edges[1].cross_az && m.edges[1].cost_usd == 0.0);
    assert_eq!(m.edges[3].failed_total, 3);
    assert_eq!(m.tables.top_failures, ["e3"]);
    assert_eq!(m.tables.top_cross_az_cost, ["e0"]);
    let errors = MapQuery { errors: true, ..MapQuery::default() };
    assert_eq!(model::build(&rows, &errors, &ctx(60.0)).edges.len(), 1);
    let scope = MapQuery { scope: "internet".into(), ..MapQuery::default() };
    let m = model::build(&rows, &scope, &ctx(60.0));
    assert_eq!((m.edges.len(), m.edges[0].server.as_str()), (1, "internet"));
    let search = MapQuery { search: "front".into(), ..MapQuery::default() };
    assert_eq!(model::build(&rows, &search, &ctx(60.0)).edges.len(), 1);
    let top = MapQuery { top: 2, ..MapQuery::default() };
    let m = model::build(&rows, &top, &ctx(60.0));
    assert_eq!((m.edges.len(), m.totals.edges, m.totals.edges_shown, m.nodes.len()), (2, 4, 2, 3));
}

#[test]
fn grouping_by_task_container_and_zone() {
    let rows = vec![(web_to_api(Direction::Outgoing), values(1, 2, 1))];
    let ids = |group| {
        let m = model::build(&rows, &MapQuery { group, ..MapQuery::default() }, &ctx(60.0));
        (m.edges[0].client.clone(), m.edges[0].server.clone())
    };
    assert_eq!(ids(Group::Task), ("task:prod/web:3".into(), "task:prod/api:7".into()));
    assert_eq!(ids(Group::Container), ("container:prod/web:3/web".into(), "container:prod/api:7/api".into()));
    assert_eq!(ids(Group::Az), ("az:us-east-1a".into(), "az:us-east-1b".into()));
}

#[test]
fn queries_are_checked() {
    let p = |pairs: &[(&str, &str)]| {
        MapQuery::parse(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>())
    };
    let q = p(&[
        ("window", "15m"),
        ("group", "az"),
        ("top", "7"),
        ("scope", "cross-az"),
        ("errors", "true"),
        ("search", " Web "),
    ])
    .expect("a valid query");
    assert_eq!(
        (q.window_duration, q.group, q.top, q.scope.as_str(), q.errors, q.search.as_str()),
        (Duration::from_secs(900), Group::Az, 7, "cross-az", true, "web")
    );
    assert_eq!(p(&[("window", "2m")]), Err(QueryError::Window("2m".into())));
    assert_eq!(p(&[("top", "0")]), Err(QueryError::Top("0".into())));
    assert_eq!(p(&[("top", "1001")]), Err(QueryError::Top("1001".into())));
    assert_eq!(p(&[("scope", "mars")]), Err(QueryError::Scope("mars".into())));
    assert_eq!(p(&[("limit", "1")]), Err(QueryError::Unknown("limit".into())));
    assert!(p(&[("view", "table"), ("select", "e0")]).is_ok());
}

fn at(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
}

fn interval(start: u64, end: u64, rows: Vec<(SeriesKey, SeriesValues)>) -> Interval {
    Interval { start: at(start), end: at(end), deltas: rows }
}

#[test]
fn history_sums_the_buckets_of_a_window() {
    let mut h = History::new(at(0), Prices::default());
    let k = web_to_api(Direction::Outgoing);
    // One interval every 10 s for 10 minutes, 100 B each.
    for i in 0..60 {
        h.add(&interval(i * 10, i * 10 + 10, vec![(k.clone(), values(100, 0, 0))]));
    }
    let sum = |w: u64| {
        let (rows, covered) = h.window(at(600), Duration::from_secs(w));
        (rows.iter().map(|(_, v)| v.bytes_sent).sum::<u64>(), covered)
    };
    assert_eq!(sum(3600), (6_000, 600.0));
    // Buckets of 60 s (each closes at the first interval ending ≥ 60 s after its start).
    let (bytes, covered) = sum(300);
    assert_eq!(bytes as f64, covered / 10.0 * 100.0, "{bytes} over {covered}");
    assert!((300.0..360.0).contains(&covered), "{covered}");
    assert_eq!(h.stats().buckets, 10);
}

#[test]
fn history_is_bounded_and_counts_what_it_folds() {
    let mut h = History::bounded(at(0), Prices::default(), 4);
    let rows: Vec<_> =
        (0..6).map(|i| (key(Direction::Outgoing, &format!("{}", 1000 + i)), values(10, 0, 1))).collect();
    h.add(&interval(0, 10, rows));
    let st = h.stats();
    // 4 rows admitted, then the other two folded into one `other` row (over the bound by it).
    assert_eq!((st.folded, st.trimmed), (2, 0));
    let (rows, _) = h.window(at(10), Duration::from_secs(300));
    assert_eq!(rows.iter().map(|(_, v)| v.bytes_sent).sum::<u64>(), 60);
    assert_eq!(rows.iter().filter(|(k, _)| k.is_other()).count(), 1);
    // A later bucket pushes the oldest out.
    h.add(&interval(100, 110, vec![(key(Direction::Outgoing, "1"), values(1, 0, 0))]));
    assert_eq!(h.stats().trimmed, 1);
    let (rows, _) = h.window(at(110), Duration::from_secs(3600));
    assert_eq!(rows.iter().map(|(_, v)| v.bytes_sent).sum::<u64>(), 1);
}

#[test]
fn three_hundred_services_stay_readable_top_n_and_by_zone() {
    // svc-i calls svc-(i+1) and svc-(i+7), 600 edges of distinct sizes, three zones.
    let zone = |i: usize| format!("us-east-1{}", ['a', 'b', 'c'][i % 3]);
    let mut rows = Vec::new();
    for i in 0..300 {
        for (n, step) in [(0, 1), (1, 7)] {
            let j = (i + step) % 300;
            let mut k = key(Direction::Outgoing, "8080");
            k.local_cluster = "prod".into();
            k.local_service = format!("svc-{i}");
            k.local_az = zone(i);
            k.remote_cluster = "prod".into();
            k.remote_service = format!("svc-{j}");
            k.remote_az = zone(j);
            k.scope = if zone(i) == zone(j) { "same-az".into() } else { "cross-az".into() };
            rows.push((k, values(1_000 + (2 * i + n) as u64, 1, 1)));
        }
    }
    let m = model::build(&rows, &MapQuery::default(), &ctx(300.0));
    assert_eq!((m.totals.edges, m.edges.len()), (600, super::query::DEFAULT_TOP));
    let mut sizes: Vec<u64> = m.edges.iter().map(|e| e.bytes_client_to_server).collect();
    sizes.sort_unstable();
    let largest: Vec<u64> = (600 - super::query::DEFAULT_TOP as u64..600).map(|x| 1_000 + x).collect();
    assert_eq!(sizes, largest, "the top N edges by bytes");
    assert!(m.nodes.len() <= 2 * super::query::DEFAULT_TOP, "only the shown edges' ends: {}", m.nodes.len());
    let z = model::build(&rows, &MapQuery { group: Group::Az, ..MapQuery::default() }, &ctx(300.0));
    assert_eq!(z.nodes.len(), 3, "{:?}", z.nodes.iter().map(|n| &n.id).collect::<Vec<_>>());
    assert!(z.edges.len() <= 9 && z.edges.iter().map(|e| e.connections).sum::<u64>() == 600);
}
