//! Series keyed by identities (workloads, scope, zones, remote resource) and priced transfer.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use super::transfer::TransferValues;
use super::*;
use crate::flow::{EcsLabels, Endpoint, OwnerKind, Protocol, RemoteAws, Scope};

fn ecs(service: &str, family: &str, container: &str, az: &str) -> Option<std::sync::Arc<EcsLabels>> {
    Some(std::sync::Arc::new(EcsLabels {
        cluster: Some("prod".into()),
        task_family: Some(family.into()),
        task_revision: Some("7".into()),
        service: Some(service.into()),
        container_name: Some(container.into()),
        availability_zone: Some(az.into()),
        ..Default::default()
    }))
}

fn aws(kind: OwnerKind, name: &str, az: &str) -> Option<std::sync::Arc<RemoteAws>> {
    Some(std::sync::Arc::new(RemoteAws {
        kind,
        name: Some(name.into()),
        id: None,
        vpc: Some("vpc-1".into()),
        subnet: None,
        availability_zone: Some(az.into()),
    }))
}

/// A closed outgoing TCP flow 10.0.1.5 → `remote`:443.
fn flow(cookie: u64, remote: &str, sent: u64, received: u64, scope: Option<Scope>) -> FlowRecord {
    let mut f = FlowRecord::test(Protocol::Tcp, cookie, true);
    f.local = Endpoint::new("10.0.1.5".parse::<IpAddr>().expect("ip"), 40_000);
    f.remote = Endpoint::new(remote.parse::<IpAddr>().expect("ip"), 443);
    (f.bytes_sent, f.bytes_received, f.scope) = (sent, received, scope);
    f
}

fn agg(max_series: usize, labels: &[&str]) -> Aggregator {
    let labels: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
    let settings = AggregateSettings {
        max_series,
        series_idle_intervals: 3,
        labels: LabelGroups::parse(&labels).expect("groups"),
        prices: Prices::default(),
        late_intervals: 2,
    };
    Aggregator::new(settings, SystemTime::UNIX_EPOCH)
}

fn default_agg() -> Aggregator {
    agg(OTHER_SLOTS + 100, &DEFAULT_GROUPS)
}

fn t(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(s)
}

#[test]
fn series_carry_workloads_scope_zones_and_no_addresses_when_both_ends_are_named() {
    let mut a = default_agg();
    let mut f = flow(1, "10.0.2.9", 1_000_000, 500, Some(Scope::CrossAz));
    f.local.ecs = ecs("web", "web", "app", "us-east-1a");
    f.remote.ecs = ecs("api", "api", "srv", "us-east-1b");
    a.observe(&f);
    let r = a.finish_interval(t(10));
    assert_eq!(r.len(), 1);
    let v = serde_json::to_value(&r[0]).expect("json");
    for (field, want) in [
        ("scope", "cross-az"),
        ("local_cluster", "prod"),
        ("local_service", "web"),
        ("local_task", "web:7"),
        ("local_container", "app"),
        ("local_az", "us-east-1a"),
        ("remote_cluster", "prod"),
        ("remote_service", "api"),
        ("remote_task", "api:7"),
        ("remote_container", "srv"),
        ("remote_az", "us-east-1b"),
        ("server_port", "443"),
    ] {
        assert_eq!(v[field], want, "{field}: {v}");
    }
    assert!(v.get("local_addr").is_none() && v.get("remote_addr").is_none(), "both ends named: {v}");
    assert!(v.get("remote_kind").is_none(), "{v}");
    // Only what the local end sent: the remote task runs its own agent, which counts the 500.
    assert_eq!(v["cross_az_bytes"], 1_000_000, "{v}");
    assert!(v.get("nat_gateway_bytes").is_none(), "{v}");
    // 10^6 bytes × 2 × $0.01/GB = $0.00002.
    assert_eq!(v["estimated_cost_usd"].as_f64(), Some(0.00002), "{v}");
    let rows = a.transfers();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    let labels: Vec<(&str, String)> = row.key.labels();
    let want: Vec<(&str, String)> = [
        ("local_cluster", "prod"),
        ("local_workload", "web"),
        ("local_az", "us-east-1a"),
        ("remote_cluster", "prod"),
        ("remote_workload", "api"),
        ("remote_az", "us-east-1b"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_string()))
    .collect();
    assert_eq!(labels, want);
    assert_eq!(
        row.values,
        TransferValues {
            cross_az_sent: 1_000_000,
            cross_az_received: 0,
            cross_az_billed: 1_000_000,
            nat_gateway: 0
        }
    );
    assert_eq!(row.cross_az_cost.to_string(), "0.00002");
    assert_eq!(row.nat_gateway_cost, Usd(0));
}

#[test]
fn unnamed_ends_keep_their_address_and_the_host_zone_is_the_local_zone() {
    let mut a = default_agg();
    a.set_host_az(Some("us-east-1a".into()));
    let mut f = flow(1, "10.0.2.21", 100, 1, Some(Scope::CrossAz));
    f.remote.aws = aws(OwnerKind::Rds, "orders-db", "us-east-1b");
    a.observe(&f);
    // An unnamed peer (no ECS, no AWS name): its address stays.
    a.observe(&flow(2, "10.0.9.9", 7, 0, None));
    a.finish_interval(t(10));
    let s = a.series();
    assert_eq!(s.len(), 2);
    let (named, unnamed) = (&s[0].0, &s[1].0);
    let pairs =
        |k: &SeriesKey| -> Vec<String> { k.labels().iter().map(|(l, v)| format!("{l}={v}")).collect() };
    assert_eq!(
        pairs(named),
        [
            "protocol=tcp",
            "family=ipv4",
            "direction=outgoing",
            "local_addr=10.0.1.5",
            "server_port=443",
            "scope=cross-az",
            "local_az=us-east-1a",
            "remote_az=us-east-1b",
            "remote_kind=rds",
            "remote_name=orders-db",
        ]
    );
    assert_eq!(unnamed.remote_addr, "10.0.9.9");
    assert_eq!(unnamed.local_addr, "10.0.1.5");
    // RDS runs no agent: what it sent (1 byte) is counted here too.
    let rows = a.transfers();
    assert_eq!(rows.len(), 1, "the same-zone-unknown flow is no transfer");
    assert_eq!((rows[0].values.cross_az_sent, rows[0].values.cross_az_received), (100, 1));
    assert_eq!(rows[0].key.remote_workload, "orders-db");
    assert_eq!(rows[0].key.local_workload, "");
}

/// 5 GB through a NAT gateway in another zone: $0.10 of inter-AZ transfer (both sides at
/// $0.01/GB) and $0.225 of NAT processing; an ALB across zones costs nothing.
#[test]
fn nat_gateway_and_load_balancer_costs_to_the_cent() {
    let mut a = default_agg();
    let mut nat = flow(1, "10.0.2.21", 3_000_000_000, 2_000_000_000, Some(Scope::CrossAz));
    nat.local.ecs = ecs("web", "web", "app", "us-east-1a");
    nat.remote.aws = aws(OwnerKind::NatGateway, "nat-0a1b", "us-east-1b");
    let mut alb = flow(2, "10.0.2.20", 40_000, 60_000, Some(Scope::CrossAz));
    alb.local.ecs = ecs("web", "web", "app", "us-east-1a");
    alb.remote.aws = aws(OwnerKind::Alb, "public-alb", "us-east-1b");
    let mut same = flow(3, "10.0.1.30", 9_999, 9_999, Some(Scope::SameAz));
    same.remote.aws = aws(OwnerKind::Nlb, "internal-nlb", "us-east-1a");
    for f in [&nat, &alb, &same] {
        a.observe(f);
    }
    let records = a.finish_interval(t(10));
    let rows = a.transfers();
    assert_eq!(rows.len(), 2, "same-AZ NLB traffic is not priced: {rows:?}");
    let by = |name: &str| rows.iter().find(|r| r.key.remote_workload == name).expect(name).clone();
    let n = by("nat-0a1b");
    assert_eq!(
        n.values,
        TransferValues {
            cross_az_sent: 3_000_000_000,
            cross_az_received: 2_000_000_000,
            cross_az_billed: 5_000_000_000,
            nat_gateway: 5_000_000_000,
        }
    );
    assert_eq!((n.cross_az_cost.to_string(), n.nat_gateway_cost.to_string()), ("0.1".into(), "0.225".into()));
    assert!(n.key.billed());
    let l = by("public-alb");
    assert_eq!((l.values.cross_az(), l.values.cross_az_billed), (100_000, 0));
    assert_eq!(l.cross_az_cost, Usd(0));
    assert!(!l.key.billed());
    let cost: f64 = records.iter().filter_map(|r| r.estimated_cost_usd).sum();
    assert_eq!(format!("{cost:.6}"), "0.325000");
    let total: u64 = records.iter().map(|r| r.nat_gateway_bytes).sum();
    assert_eq!(total, 5_000_000_000);
}

/// Many workload pairs across zones, few slots: series and pairs fold into `other`, and every
/// byte (and cross-AZ byte) is still counted exactly once.
#[test]
fn the_other_fold_keeps_exact_totals_with_identity_keys() {
    const PAIRS: u64 = 2_000;
    let mut a = agg(OTHER_SLOTS + 8, &DEFAULT_GROUPS);
    let mut sent = 0;
    for i in 0..PAIRS {
        let mut f = flow(i, "10.0.2.9", 1 + i % 13, 2, Some(Scope::CrossAz));
        f.local.ecs = ecs("web", "web", "app", "us-east-1a");
        f.remote.ecs = ecs(&format!("svc-{i}"), &format!("svc-{i}"), "srv", "us-east-1b");
        sent += 1 + i % 13;
        a.observe(&f);
    }
    let records = a.finish_interval(t(10));
    let s = a.series();
    assert!(s.len() <= OTHER_SLOTS + 8, "{} series", s.len());
    assert!(s.iter().any(|(k, _)| k.is_other()));
    assert_eq!(s.iter().map(|(_, v)| v.bytes_sent).sum::<u64>(), sent);
    assert_eq!(s.iter().map(|(_, v)| v.transfer.cross_az_sent).sum::<u64>(), sent);
    assert_eq!(records.iter().map(|r| r.cross_az_bytes).sum::<u64>(), sent);
    let rows = a.transfers();
    assert!(rows.len() <= OTHER_SLOTS + 8, "{} pairs", rows.len());
    assert!(rows.iter().any(|r| r.key.is_other()));
    assert_eq!(rows.iter().map(|r| r.values.cross_az_sent).sum::<u64>(), sent);
    assert_eq!(rows.iter().map(|r| r.values.cross_az_received).sum::<u64>(), 0);
    let cost = rows.iter().fold(Usd(0), |c, r| c + r.cross_az_cost);
    assert_eq!(cost, Prices::default().cross_az(sent));
    assert_eq!(rows.len(), OTHER_SLOTS + 8, "the cap, `other` included");
    assert_eq!(a.stats().transfer_folded, PAIRS - (OTHER_SLOTS + 8 - 1) as u64);
}

#[test]
fn series_labels_choose_the_groups() {
    let mut f = flow(1, "10.0.2.9", 5, 0, Some(Scope::CrossAz));
    f.local.ecs = ecs("web", "web", "app", "us-east-1a");
    f.remote.ecs = ecs("api", "api", "srv", "us-east-1b");
    let mut a = agg(OTHER_SLOTS + 10, &["addresses", "az"]);
    a.observe(&f);
    a.finish_interval(t(1));
    let k = &a.series()[0].0;
    let names: Vec<&str> = k.labels().iter().map(|(l, _)| *l).collect();
    assert_eq!(
        names,
        [
            "protocol",
            "family",
            "direction",
            "local_addr",
            "remote_addr",
            "server_port",
            "local_az",
            "remote_az"
        ]
    );
    let e = LabelGroups::parse(&["workloads".into(), "pods".into()]).expect_err("unknown group");
    assert!(e.starts_with("series_labels: unknown label group \"pods\""), "{e}");
}

#[test]
fn usd_amounts_are_exact_decimals() {
    assert_eq!(Usd(0).to_string(), "0");
    assert_eq!(Prices::default().cross_az(1).to_string(), "0.00000000002");
    assert_eq!(Prices::default().nat_gateway(1_000_000_000).to_string(), "0.045");
    assert_eq!(Prices::from_usd_per_gb(0.01, 0.045).cross_az(150_000_000_000).to_string(), "3");
    assert_eq!(
        Prices::from_usd_per_gb(-1.0, f64::NAN),
        Prices { inter_az_nano_usd_per_gb: 0, nat_gateway_nano_usd_per_gb: 0 }
    );
}
