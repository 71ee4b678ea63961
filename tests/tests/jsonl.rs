//! `--output jsonl`: flow records and per-interval aggregate records on stdout, with exact bytes; the
//! deployment's static tags (`--tags`) on every line, every `/flows` record and every `/metrics` sample.

use std::time::Duration;

use eddy_tests::*;
use serde_json::Value;

#[test]
fn jsonl_output_has_flow_and_aggregate_records() {
    if !require_privileges() {
        return;
    }
    let agent = RunAgent::start(&[
        "--poll-interval",
        "200ms",
        "--export-interval",
        "500ms",
        "--output",
        "jsonl",
        "--tags",
        "env:test, team:flows",
    ]);
    let tags = serde_json::json!({"env": "test", "team": "flows"});
    const PLAN: &[(usize, usize)] = &[(2_048, 100), (1, 99_999)];
    let server = exchanges_between_namespaces("jsonl", PLAN);
    let port = server.port().to_string();
    let up: u64 = PLAN.iter().map(|p| p.0 as u64).sum();
    let down: u64 = PLAN.iter().map(|p| p.1 as u64).sum();
    poll_until(Duration::from_secs(15), Duration::from_millis(200), "flows and aggregates on stdout", || {
        let lines: Vec<Value> = agent
            .stdout_lines()
            .iter()
            .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
            .collect();
        if let Some(untagged) = lines.iter().find(|v| v["tags"] != tags) {
            panic!("a line without the static tags: {untagged}");
        }
        let (aggregates, flows): (Vec<&Value>, Vec<&Value>) =
            lines.iter().partition(|v| v["record"] == "aggregate");
        let ours: Vec<&&Value> = aggregates
            .iter()
            .filter(|v| v["server_port"] == port.as_str() && v["direction"] == "outgoing")
            .collect();
        let agg_up: u64 = ours.iter().filter_map(|v| v["bytes_sent"].as_u64()).sum();
        let agg_down: u64 = ours.iter().filter_map(|v| v["bytes_received"].as_u64()).sum();
        let closed: Vec<&&Value> = flows
            .iter()
            .filter(|v| {
                v["remote"]["port"] == server.port()
                    && v["direction"] == "outgoing"
                    && !v["closed_at"].is_null()
            })
            .collect();
        let flow_up: u64 = closed.iter().filter_map(|v| v["bytes_sent"].as_u64()).sum();
        if (agg_up, agg_down, closed.len(), flow_up) == (up, down, PLAN.len(), up) {
            Ok(())
        } else {
            Err(format!(
                "aggregates {agg_up}/{agg_down}, {} closed flows with {flow_up} bytes up",
                closed.len()
            ))
        }
    });
}

#[test]
fn static_tags_on_flows_metrics_and_status_and_bad_tags_refused() {
    if !require_privileges() {
        return;
    }
    let agent =
        RunAgent::start(&["--poll-interval", "200ms", "--export-interval", "500ms", "--tags", "env:test"]);
    const PLAN: &[(usize, usize)] = &[(10, 20)];
    exchanges_between_namespaces("tags", PLAN);
    let flows: Vec<Value> = poll_until(Duration::from_secs(10), Duration::from_millis(200), "flows", || {
        let f: Vec<Value> = serde_json::from_str(&agent.get("/flows").text()).map_err(|e| e.to_string())?;
        if f.is_empty() { Err("none".into()) } else { Ok(f) }
    });
    assert!(flows.iter().all(|f| f["tags"]["env"] == "test"), "{flows:?}");
    assert_eq!(agent.status()["tags"]["env"], "test");
    poll_until(Duration::from_secs(10), Duration::from_millis(200), "tagged series", || {
        let text = agent.get("/metrics").text();
        let samples: Vec<&str> =
            text.lines().filter(|l| l.starts_with("eddy_flow_sent_bytes_total{")).collect();
        if samples.is_empty() {
            return Err("no series yet".into());
        }
        match text.lines().filter(|l| !l.starts_with('#')).find(|l| !l.contains(r#"env="test"}"#)) {
            Some(l) => Err(format!("untagged sample {l}")),
            None => Ok(()),
        }
    });
    let out = agent_command(&["run".into(), "--tags".into(), "protocol:x".into()]).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "a bad tag is a configuration error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tag key \"protocol\" is a label Eddy uses itself"), "{err}");
}
