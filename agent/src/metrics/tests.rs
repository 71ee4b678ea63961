use std::collections::BTreeMap;

use super::*;
use crate::aggregate::{Histogram, SeriesValues};
use crate::collector::{HookStatus, MapStatus};
use crate::flow::{Direction, Failure, Family, Protocol};
use crate::preflight::KernelInfo;
use crate::table::TableStats;

fn status() -> Status {
    Status {
        version: "0.1.0",
        collector: "ebpf",
        collector_reason: None,
        collector_limits: None,
        ready: true,
        collecting: true,
        liveness: crate::liveness::Health::Stopped,
        uptime_seconds: 12.5,
        last_scan_age_seconds: Some(0.2),
        kernel: KernelInfo {
            release: "6.1".into(),
            btf: true,
            cgroup2: None,
            cgroup2_mounted_by_agent: false,
        },
        hooks: vec![HookStatus { capability: "tcp_bytes", chosen: Some("x".into()), rejected: vec![] }],
        maps: vec![MapStatus { name: "tcp_flows", capacity: 64, entries: Some(3) }],
        memory: crate::status::Memory {
            rss_bytes: Some(20 << 20),
            rss_peak_bytes: Some(30 << 20),
            kernel_maps_bytes: 4096,
            kernel_maps: [("TCP_FLOWS".to_string(), 4096)].into(),
        },
        programs: crate::status::Programs {
            stats_enabled: Some(true),
            by_program: [(
                "eddy_state".to_string(),
                crate::collector::ProgramRuns { runs: 10, run_time_ns: 2_500 },
            )]
            .into(),
        },
        drops: BTreeMap::from([("tcp_map_full", 2)]),
        counters: BTreeMap::new(),
        flows: TableStats::default(),
        labels: Default::default(),
        aggregation: AggregateStats::default(),
        otlp: None,
        ecs: None,
        ecs_api: None,
        aws: None,
        tags: crate::tags::Tags::default(),
        fips: None,
        dns: None,
        conntrack: None,
        privileges: None,
        api: crate::state::ApiStats::default().counts(),
        map: Default::default(),
        cgroup_scope: None,
    }
}

fn series() -> Vec<(SeriesKey, SeriesValues)> {
    let mut rtt = Histogram::default();
    rtt.observe(2_000);
    rtt.observe(300_000);
    let key = SeriesKey {
        local_addr: "10.0.0.1".into(),
        remote_addr: r#"we"ird\"#.into(),
        ..SeriesKey::bare(Protocol::Tcp, Family::Ipv4, Direction::Outgoing, "443".into())
    };
    let values = SeriesValues {
        bytes_sent: 305,
        connections_failed: BTreeMap::from([(Failure::Refused, 1)]),
        rtt,
        ..Default::default()
    };
    vec![(key, values)]
}

#[test]
fn text_format_has_total_suffixes_escaping_and_cumulative_buckets() {
    let st = status();
    let series = series();
    let out = render(
        &Snapshot {
            series: &series,
            aggregate: AggregateStats::default(),
            status: &st,
            dns: &[],
            transfers: &[],
        },
        false,
    );
    assert!(out.contains("# TYPE eddy_flow_sent_bytes_total counter\n"), "{out}");
    let expected = concat!(
        r#"eddy_flow_sent_bytes_total{protocol="tcp",family="ipv4",direction="outgoing","#,
        r#"local_addr="10.0.0.1",remote_addr="we\"ird\\",server_port="443"}"#,
    );
    assert!(out.contains(expected), "{out}");
    assert!(out.contains(r#",reason="refused"} 1"#), "{out}");
    assert!(out.contains(r#"le="0.0025"} 1"#), "{out}");
    assert!(out.contains(r#"le="0.25"} 1"#) && out.contains(r#"le="1"} 2"#), "{out}");
    assert!(out.contains(r#"le="+Inf"} 2"#), "{out}");
    assert!(out.contains("eddy_tcp_rtt_seconds_sum{") && out.contains("} 0.302\n"), "{out}");
    assert!(out.contains(r#"eddy_agent_dropped_total{cause="tcp_map_full"} 2"#), "{out}");
    assert!(out.contains(r#"eddy_agent_map_entries{map="tcp_flows"} 3"#), "{out}");
    assert!(out.contains(r#"eddy_agent_ebpf_program_runs_total{program="eddy_state"} 10"#), "{out}");
    assert!(
        out.contains(r#"eddy_agent_ebpf_program_run_seconds_total{program="eddy_state"} 0.0000025"#),
        "{out}"
    );
    assert!(!out.contains("# EOF"));
}

#[test]
fn openmetrics_names_families_without_total_and_ends_with_eof() {
    let st = status();
    let out = render(
        &Snapshot {
            series: &[],
            aggregate: AggregateStats::default(),
            status: &st,
            dns: &[],
            transfers: &[],
        },
        true,
    );
    assert!(out.contains("# TYPE eddy_flow_sent_bytes counter\n"), "{out}");
    assert!(out.contains("# TYPE eddy_agent_dropped counter\n"), "{out}");
    assert!(out.ends_with("# EOF\n"));
}

#[test]
fn enrichment_errors_and_freshness_per_provider() {
    let mut st = status();
    st.ecs = Some(ProviderHealth::new(crate::ecs::local::EcsStatus {
        errors: BTreeMap::from([("ecs_agent_unreachable", 3)]),
        last_refresh_age_seconds: Some(1.5),
        ..Default::default()
    }));
    st.ecs_api = Some(ProviderHealth::new(crate::ecs::remote::RemoteStatus {
        errors: BTreeMap::from([("ecs_api_throttled", 2)]),
        last_refresh_age_seconds: None,
        ..Default::default()
    }));
    let out = render(
        &Snapshot {
            series: &[],
            aggregate: AggregateStats::default(),
            status: &st,
            dns: &[],
            transfers: &[],
        },
        false,
    );
    assert!(
        out.contains(r#"eddy_agent_enrichment_errors_total{provider="ecs",cause="ecs_agent_unreachable"} 3"#),
        "{out}"
    );
    assert!(
        out.contains(r#"eddy_agent_enrichment_errors_total{provider="ecs_api",cause="ecs_api_throttled"} 2"#),
        "{out}"
    );
    assert!(out.contains(r#"eddy_agent_enrichment_age_seconds{provider="ecs"} 1.500"#), "{out}");
    assert!(!out.contains(r#"eddy_agent_enrichment_age_seconds{provider="ecs_api"}"#), "{out}");
    let none = render(
        &Snapshot {
            series: &[],
            aggregate: AggregateStats::default(),
            status: &status(),
            dns: &[],
            transfers: &[],
        },
        false,
    );
    assert!(!none.contains("enrichment"), "no providers, no families");
}

#[test]
fn static_tags_label_every_sample() {
    let mut st = status();
    st.tags = crate::tags::Tags::parse(&["env:prod".to_string()]).expect("tags");
    let series = series();
    let out = render(
        &Snapshot {
            series: &series,
            aggregate: AggregateStats::default(),
            status: &st,
            dns: &[],
            transfers: &[],
        },
        false,
    );
    let samples: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(!samples.is_empty());
    for l in &samples {
        assert!(l.contains(r#"env="prod"}"#), "untagged sample: {l}");
    }
}

/// Identity labels (empty ones left out) and the transfer families with exact values.
#[test]
fn identity_labels_and_cross_az_transfer_with_exact_costs() {
    use crate::aggregate::transfer::{TransferKey, TransferValues};
    use crate::aggregate::{Prices, TransferRow};
    let st = status();
    let key = SeriesKey {
        local_addr: "10.0.1.5".into(),
        scope: "cross-az".into(),
        local_az: "us-east-1a".into(),
        remote_az: "us-east-1b".into(),
        remote_kind: "nat_gateway".into(),
        remote_name: "nat-0a1b".into(),
        ..SeriesKey::bare(Protocol::Tcp, Family::Ipv4, Direction::Outgoing, "443".into())
    };
    let series = vec![(key, SeriesValues { bytes_sent: 3_000_000_000, ..Default::default() })];
    let p = Prices::default();
    let row = |workload: &str, kind: &str, values: TransferValues| TransferRow {
        key: TransferKey {
            local_cluster: "prod".into(),
            local_workload: "web".into(),
            local_az: "us-east-1a".into(),
            remote_cluster: String::new(),
            remote_workload: workload.into(),
            remote_kind: kind.into(),
            remote_az: "us-east-1b".into(),
        },
        values,
        cross_az_cost: p.cross_az(values.cross_az_billed),
        nat_gateway_cost: p.nat_gateway(values.nat_gateway),
    };
    let transfers = vec![
        row(
            "nat-0a1b",
            "nat_gateway",
            TransferValues {
                cross_az_sent: 3_000_000_000,
                cross_az_received: 2_000_000_000,
                cross_az_billed: 5_000_000_000,
                nat_gateway: 5_000_000_000,
            },
        ),
        row(
            "public-alb",
            "alb",
            TransferValues {
                cross_az_sent: 40_000,
                cross_az_received: 60_000,
                cross_az_billed: 0,
                nat_gateway: 0,
            },
        ),
    ];
    let out = render(
        &Snapshot {
            series: &series,
            transfers: &transfers,
            aggregate: AggregateStats::default(),
            status: &st,
            dns: &[],
        },
        false,
    );
    let lines: Vec<&str> = out.lines().collect();
    let has = |l: &str| assert!(lines.contains(&l), "no line {l}:\n{out}");
    has(concat!(
        r#"eddy_flow_sent_bytes_total{protocol="tcp",family="ipv4",direction="outgoing",local_addr="10.0.1.5","#,
        r#"server_port="443",scope="cross-az",local_az="us-east-1a",remote_az="us-east-1b","#,
        r#"remote_kind="nat_gateway",remote_name="nat-0a1b"} 3000000000"#
    ));
    let pair = r#"local_cluster="prod",local_workload="web",local_az="us-east-1a",remote_workload="nat-0a1b",remote_kind="nat_gateway",remote_az="us-east-1b""#;
    has(&format!(r#"eddy_cross_az_bytes_total{{{pair},transfer="sent",billed="true"}} 3000000000"#));
    has(&format!(r#"eddy_cross_az_bytes_total{{{pair},transfer="received",billed="true"}} 2000000000"#));
    has(&format!(r#"eddy_nat_gateway_bytes_total{{{pair}}} 5000000000"#));
    has(&format!(r#"eddy_estimated_transfer_cost_usd_total{{{pair},charge="cross_az"}} 0.1"#));
    has(&format!(r#"eddy_estimated_transfer_cost_usd_total{{{pair},charge="nat_gateway"}} 0.225"#));
    let alb = r#"local_cluster="prod",local_workload="web",local_az="us-east-1a",remote_workload="public-alb",remote_kind="alb",remote_az="us-east-1b""#;
    has(&format!(r#"eddy_cross_az_bytes_total{{{alb},transfer="sent",billed="false"}} 40000"#));
    has(&format!(r#"eddy_estimated_transfer_cost_usd_total{{{alb},charge="cross_az"}} 0"#));
    assert!(!out.contains(&format!("eddy_nat_gateway_bytes_total{{{alb}")), "{out}");
    assert!(out.contains("# TYPE eddy_cross_az_bytes_total counter\n"), "{out}");
}
