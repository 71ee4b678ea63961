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
    }
}

fn series() -> Vec<(SeriesKey, SeriesValues)> {
    let mut rtt = Histogram::default();
    rtt.observe(2_000);
    rtt.observe(300_000);
    let key = SeriesKey {
        protocol: Protocol::Tcp,
        family: Family::Ipv4,
        direction: Direction::Outgoing,
        local_addr: "10.0.0.1".into(),
        remote_addr: r#"we"ird\"#.into(),
        server_port: "443".into(),
        local_task: String::new(),
        local_container: String::new(),
        remote_task: String::new(),
        remote_container: String::new(),
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
        &Snapshot { series: &series, aggregate: AggregateStats::default(), status: &st, dns: &[] },
        false,
    );
    assert!(out.contains("# TYPE eddy_flow_sent_bytes_total counter\n"), "{out}");
    let expected = concat!(
        r#"eddy_flow_sent_bytes_total{protocol="tcp",family="ipv4",direction="outgoing","#,
        r#"local_addr="10.0.0.1",remote_addr="we\"ird\\",server_port="443","#,
    );
    assert!(out.contains(expected), "{out}");
    assert!(out.contains(r#",reason="refused"} 1"#), "{out}");
    assert!(out.contains(r#"le="0.0025"} 1"#), "{out}");
    assert!(out.contains(r#"le="0.25"} 1"#) && out.contains(r#"le="1"} 2"#), "{out}");
    assert!(out.contains(r#"le="+Inf"} 2"#), "{out}");
    assert!(out.contains("eddy_tcp_rtt_seconds_sum{") && out.contains("} 0.302\n"), "{out}");
    assert!(out.contains(r#"eddy_agent_dropped_total{cause="tcp_map_full"} 2"#), "{out}");
    assert!(out.contains(r#"eddy_agent_map_entries{map="tcp_flows"} 3"#), "{out}");
    assert!(!out.contains("# EOF"));
}

#[test]
fn openmetrics_names_families_without_total_and_ends_with_eof() {
    let st = status();
    let out =
        render(&Snapshot { series: &[], aggregate: AggregateStats::default(), status: &st, dns: &[] }, true);
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
    let out =
        render(&Snapshot { series: &[], aggregate: AggregateStats::default(), status: &st, dns: &[] }, false);
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
        &Snapshot { series: &[], aggregate: AggregateStats::default(), status: &status(), dns: &[] },
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
        &Snapshot { series: &series, aggregate: AggregateStats::default(), status: &st, dns: &[] },
        false,
    );
    let samples: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(!samples.is_empty());
    for l in &samples {
        assert!(l.contains(r#"env="prod"}"#), "untagged sample: {l}");
    }
}
