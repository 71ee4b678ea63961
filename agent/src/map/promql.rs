//! PromQL: what a person runs to get an edge's numbers from Prometheus (shown beside each edge),
//! and the queries of the Prometheus source ([`super::prometheus`]).

use std::collections::BTreeMap;

use super::ends::{End, Matcher, NodeKind};
use super::model::Edge;
use super::query::MapQuery;
use crate::aggregate::Prices;

/// A label value as a PromQL string literal body (`"` and `\` escaped, newlines as `\n`).
pub fn quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn matchers(prefix: &str, m: &[Matcher]) -> Vec<String> {
    m.iter()
        .map(|m| {
            let name = if m.whole { m.label.to_string() } else { format!("{prefix}{}", m.label) };
            format!("{name}{}\"{}\"", m.op, quote(&m.value))
        })
        .collect()
}

/// Whether an end can be the reporting (local) end of a series: it runs on a host with Eddy.
fn reports(e: &End) -> bool {
    matches!(e.kind, NodeKind::Service | NodeKind::Az) || e.id == "unknown"
}

/// The PromQL of an edge's quantities, as reported by its client (or, when the client cannot
/// run Eddy, by its server).
pub fn edge(
    e: &Edge,
    client: &End,
    server: &End,
    q: &MapQuery,
    prices: &Prices,
) -> BTreeMap<&'static str, String> {
    let by_client = reports(client) || !reports(server);
    let (direction, local, remote) =
        if by_client { ("outgoing", client, server) } else { ("incoming", server, client) };
    let mut sel = vec![format!("direction=\"{direction}\"")];
    sel.extend(matchers("local_", &local.matchers));
    sel.extend(matchers("remote_", &remote.matchers));
    if !q.scope.is_empty() && !sel.iter().any(|s| s.starts_with("scope=")) {
        sel.push(format!("scope=\"{}\"", quote(&q.scope)));
    }
    let sel = sel.join(",");
    let w = &q.window;
    let (c2s, s2c) = if by_client {
        ("eddy_flow_sent_bytes_total", "eddy_flow_received_bytes_total")
    } else {
        ("eddy_flow_received_bytes_total", "eddy_flow_sent_bytes_total")
    };
    let inc = |m: &str| format!("sum(increase({m}{{{sel}}}[{w}]))");
    let mut out = BTreeMap::from([
        ("bytes_client_to_server", inc(c2s)),
        ("bytes_server_to_client", inc(s2c)),
        ("connections", inc("eddy_connections_opened_total")),
        ("failed", format!("sum by (reason) (increase(eddy_connections_failed_total{{{sel}}}[{w}]))")),
        ("retransmits", inc("eddy_tcp_retransmits_total")),
        (
            "rtt_avg_seconds",
            format!(
                "sum(increase(eddy_tcp_rtt_seconds_sum{{{sel}}}[{w}])) / sum(increase(eddy_tcp_rtt_seconds_count{{{sel}}}[{w}]))"
            ),
        ),
    ]);
    let gb = format!("(sum(increase({c2s}{{{sel}}}[{w}])) + sum(increase({s2c}{{{sel}}}[{w}]))) / 1e9");
    let aws_kind = |e: &End| e.aws_kind.clone().unwrap_or_default();
    let kinds = [aws_kind(client), aws_kind(server)];
    let mut parts = Vec::new();
    if e.cross_az && !kinds.iter().any(|k| k == "alb" || k == "clb") {
        parts.push(format!("{gb} * {}", 2.0 * prices.inter_az_nano_usd_per_gb as f64 / 1e9));
    }
    if kinds.iter().any(|k| k == "nat_gateway") {
        parts.push(format!("{gb} * {}", prices.nat_gateway_nano_usd_per_gb as f64 / 1e9));
    }
    if !parts.is_empty() {
        out.insert("cost", parts.join(" + "));
    }
    out
}

/// Labels the Prometheus source groups by: every identity label of a series but the addresses.
pub const BY: &str = "direction, protocol, family, server_port, scope, local_cluster, local_service, local_task, \
local_container, local_az, remote_cluster, remote_service, remote_task, remote_container, remote_az, remote_kind, \
remote_name";

/// The instant queries of one counter: now, and `window` ago.
pub fn totals(metric: &str, extra_by: &str, window: &str) -> [String; 2] {
    let by = if extra_by.is_empty() { BY.to_string() } else { format!("{BY}, {extra_by}") };
    [format!("sum by ({by}) ({metric})"), format!("sum by ({by}) ({metric} offset {window})")]
}
