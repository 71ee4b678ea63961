//! `--output jsonl`: flow records and per-interval aggregate records on stdout, with exact bytes.

use std::time::Duration;

use eddy_tests::*;
use serde_json::Value;

#[test]
fn jsonl_output_has_flow_and_aggregate_records() {
    if !require_privileges() {
        return;
    }
    let agent =
        RunAgent::start(&["--poll-interval", "200ms", "--export-interval", "500ms", "--output", "jsonl"]);
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
