//! The map model: series rows over a window → nodes and client → server edges, filtered,
//! cut to the top N, with the tables and the PromQL behind each edge.
//!
//! Counting each edge once: an edge is reported by its client end (outgoing series) and, when
//! the server also runs Eddy, by its server end (incoming series). The two reports agree but for
//! timing, so each of an edge's quantities is the larger of the two (a sum would count the
//! traffic twice; either alone misses the edges whose other end has no agent).
//!
//! Cost: a cross-AZ row (scope `cross-az`, or both zones known and different) costs its bytes
//! in both directions × 2 × the inter-AZ price, except to or from an ALB/CLB (a leg AWS does not
//! bill); bytes to or from a NAT gateway cost the NAT processing price. The monthly figure
//! extrapolates the window to 30 days.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::ends::{self, End, NodeKind};
use super::promql;
use super::query::MapQuery;
use crate::aggregate::{Prices, SeriesKey, SeriesValues, Usd};
use crate::flow::{Direction, Failure};

/// Rows of the tables (`top_talkers`, ...).
pub const TABLE_ROWS: usize = 20;

/// Seconds in the 30-day month of `monthly_cost_usd`.
const MONTH_SECONDS: f64 = 30.0 * 86_400.0;

/// Where the rows came from and what they cover.
#[derive(Clone, Debug)]
pub struct Context {
    /// `agent` or `prometheus`.
    pub source: &'static str,
    pub prometheus_url: Option<String>,
    pub covered_seconds: f64,
    /// RFC 3339.
    pub generated_at: String,
    pub prices: Prices,
}

#[derive(Clone, Debug, Serialize)]
pub struct PriceView {
    pub inter_az_usd_per_gb: f64,
    pub nat_gateway_usd_per_gb: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Node {
    pub id: String,
    pub kind: NodeKind,
    pub label: String,
    pub cluster: Option<String>,
    /// The zone, when all of the node's rows agree on one.
    pub az: Option<String>,
    pub azs: Vec<String>,
    pub aws_kind: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connections: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Edge {
    pub id: String,
    pub client: String,
    pub server: String,
    pub ports: Vec<String>,
    pub protocols: Vec<String>,
    /// The scope of the edge's rows, `mixed` when they differ, absent when unknown.
    pub scope: Option<String>,
    pub bytes_client_to_server: u64,
    pub bytes_server_to_client: u64,
    pub bytes_per_second_client_to_server: f64,
    pub bytes_per_second_server_to_client: f64,
    pub packets_client_to_server: u64,
    pub packets_server_to_client: u64,
    pub connections: u64,
    pub connections_per_second: f64,
    pub failed: BTreeMap<Failure, u64>,
    pub failed_total: u64,
    pub retransmits: u64,
    /// Retransmits per packet sent by either end.
    pub retransmit_rate: f64,
    pub rtt_avg_seconds: Option<f64>,
    pub cross_az: bool,
    pub cost_usd: f64,
    pub monthly_cost_usd: f64,
    pub promql: BTreeMap<&'static str, String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub nodes: usize,
    /// Edges that pass the filters (before `top`).
    pub edges: usize,
    pub edges_shown: usize,
    /// Over the edges that pass the filters.
    pub bytes: u64,
    pub cost_usd: f64,
    pub monthly_cost_usd: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Tables {
    pub top_talkers: Vec<String>,
    pub top_cross_az_cost: Vec<String>,
    pub top_failures: Vec<String>,
}

/// The answer of `/api/map`.
#[derive(Clone, Debug, Serialize)]
pub struct Model {
    pub source: &'static str,
    pub prometheus_url: Option<String>,
    pub group: super::query::Group,
    pub window: String,
    pub window_seconds: u64,
    pub covered_seconds: f64,
    pub generated_at: String,
    pub prices: PriceView,
    pub filters: MapQuery,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    pub totals: Totals,
    pub tables: Tables,
}

/// One end's report of an edge.
#[derive(Clone, Debug, Default)]
struct Report {
    c2s: u64,
    s2c: u64,
    packets_c2s: u64,
    packets_s2c: u64,
    retransmits: u64,
    connections: u64,
    failed: BTreeMap<Failure, u64>,
    rtt_sum_us: u64,
    rtt_count: u64,
    cost: Usd,
}

impl Report {
    /// The larger of two reports, quantity by quantity (RTT from the one with more samples).
    fn max(a: &Report, b: &Report) -> Report {
        let mut failed = a.failed.clone();
        for (f, n) in &b.failed {
            let e = failed.entry(*f).or_default();
            *e = (*e).max(*n);
        }
        let rtt = if b.rtt_count > a.rtt_count { b } else { a };
        Report {
            c2s: a.c2s.max(b.c2s),
            s2c: a.s2c.max(b.s2c),
            packets_c2s: a.packets_c2s.max(b.packets_c2s),
            packets_s2c: a.packets_s2c.max(b.packets_s2c),
            retransmits: a.retransmits.max(b.retransmits),
            connections: a.connections.max(b.connections),
            failed,
            rtt_sum_us: rtt.rtt_sum_us,
            rtt_count: rtt.rtt_count,
            cost: a.cost.max(b.cost),
        }
    }
}

/// An edge being built.
#[derive(Default)]
struct Acc {
    client: Option<End>,
    server: Option<End>,
    by_client: Report,
    by_server: Report,
    ports: BTreeSet<String>,
    protocols: BTreeSet<String>,
    scopes: BTreeSet<String>,
    cross_az: bool,
}

/// Cost of one row's bytes (see the module docs).
fn row_cost(k: &SeriesKey, bytes: u64, prices: &Prices) -> (bool, Usd) {
    let cross = k.scope == "cross-az"
        || (k.scope.is_empty()
            && !k.local_az.is_empty()
            && !k.remote_az.is_empty()
            && k.local_az != k.remote_az);
    let mut cost = Usd::default();
    if cross && !matches!(k.remote_kind.as_str(), "alb" | "clb") {
        cost = cost + prices.cross_az(bytes);
    }
    if k.remote_kind == "nat_gateway" {
        cost = cost + prices.nat_gateway(bytes);
    }
    (cross, cost)
}

/// Builds the model of `rows` (series deltas over the window) for `q`.
pub fn build(rows: &[(SeriesKey, SeriesValues)], q: &MapQuery, ctx: &Context) -> Model {
    let mut accs: HashMap<(String, String), Acc> = HashMap::new();
    let mut azs: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (k, v) in rows {
        if !q.scope.is_empty() && k.scope != q.scope {
            continue;
        }
        let (local, remote) = (ends::local(k, q.group), ends::remote(k, q.group));
        let incoming = k.direction == Direction::Incoming;
        let (client, server) = if incoming { (remote, local) } else { (local, remote) };
        let (c2s, s2c) =
            if incoming { (v.bytes_received, v.bytes_sent) } else { (v.bytes_sent, v.bytes_received) };
        let (p_c2s, p_s2c) = if incoming {
            (v.packets_received, v.packets_sent)
        } else {
            (v.packets_sent, v.packets_received)
        };
        let (cross, cost) = row_cost(k, c2s + s2c, &ctx.prices);
        for end in [&client, &server] {
            if let Some(az) = &end.az {
                azs.entry(end.id.clone()).or_default().insert(az.clone());
            }
        }
        let acc = accs.entry((client.id.clone(), server.id.clone())).or_default();
        let report = if incoming { &mut acc.by_server } else { &mut acc.by_client };
        report.c2s += c2s;
        report.s2c += s2c;
        report.packets_c2s += p_c2s;
        report.packets_s2c += p_s2c;
        report.retransmits += v.retransmits;
        report.connections += v.connections_opened;
        for (f, n) in &v.connections_failed {
            *report.failed.entry(*f).or_default() += n;
        }
        report.rtt_sum_us += v.rtt.sum_us;
        report.rtt_count += v.rtt.count;
        report.cost = report.cost + cost;
        acc.ports.insert(k.server_port.clone());
        acc.protocols.insert(crate::aggregate::label(&k.protocol));
        if !k.scope.is_empty() {
            acc.scopes.insert(k.scope.clone());
        }
        acc.cross_az |= cross;
        acc.client.get_or_insert(client);
        acc.server.get_or_insert(server);
    }
    let covered = ctx.covered_seconds;
    let per_s = |n: u64| if covered > 0.0 { n as f64 / covered } else { 0.0 };
    let mut edges: Vec<(Edge, End, End)> = accs
        .into_values()
        .filter_map(|a| {
            let (client, server) = (a.client?, a.server?);
            let r = Report::max(&a.by_client, &a.by_server);
            let failed_total = r.failed.values().sum();
            let cost = r.cost.as_f64();
            let scope = match a.scopes.len() {
                0 => None,
                1 => a.scopes.into_iter().next(),
                _ => Some("mixed".to_string()),
            };
            let edge = Edge {
                id: String::new(),
                client: client.id.clone(),
                server: server.id.clone(),
                ports: a.ports.into_iter().collect(),
                protocols: a.protocols.into_iter().collect(),
                scope,
                bytes_client_to_server: r.c2s,
                bytes_server_to_client: r.s2c,
                bytes_per_second_client_to_server: per_s(r.c2s),
                bytes_per_second_server_to_client: per_s(r.s2c),
                packets_client_to_server: r.packets_c2s,
                packets_server_to_client: r.packets_s2c,
                connections: r.connections,
                connections_per_second: per_s(r.connections),
                failed: r.failed,
                failed_total,
                retransmits: r.retransmits,
                retransmit_rate: match r.packets_c2s + r.packets_s2c {
                    0 => 0.0,
                    p => r.retransmits as f64 / p as f64,
                },
                rtt_avg_seconds: (r.rtt_count > 0).then(|| r.rtt_sum_us as f64 / r.rtt_count as f64 / 1e6),
                cross_az: a.cross_az,
                cost_usd: cost,
                monthly_cost_usd: if covered > 0.0 { cost * MONTH_SECONDS / covered } else { 0.0 },
                promql: BTreeMap::new(),
            };
            Some((edge, client, server))
        })
        .filter(|(e, c, s)| (!q.errors || e.failed_total > 0) && matches(&q.search, c, s))
        .collect();
    edges.sort_by(|(a, ..), (b, ..)| {
        let (ba, bb) = (
            a.bytes_client_to_server + a.bytes_server_to_client,
            b.bytes_client_to_server + b.bytes_server_to_client,
        );
        bb.cmp(&ba).then_with(|| a.client.cmp(&b.client)).then_with(|| a.server.cmp(&b.server))
    });
    let mut totals = Totals { edges: edges.len(), ..Totals::default() };
    for (e, ..) in &edges {
        totals.bytes += e.bytes_client_to_server + e.bytes_server_to_client;
        totals.cost_usd += e.cost_usd;
        totals.monthly_cost_usd += e.monthly_cost_usd;
    }
    edges.truncate(q.top);
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut shown = Vec::with_capacity(edges.len());
    for (i, (mut e, client, server)) in edges.into_iter().enumerate() {
        e.id = format!("e{i}");
        e.promql = promql::edge(&e, &client, &server, q, &ctx.prices);
        for (end, out, inn) in [
            (&client, e.bytes_client_to_server, e.bytes_server_to_client),
            (&server, e.bytes_server_to_client, e.bytes_client_to_server),
        ] {
            let n = nodes.entry(end.id.clone()).or_insert_with(|| node(end, azs.get(&end.id)));
            n.bytes_out += out;
            n.bytes_in += inn;
            n.connections += e.connections;
            n.failed += e.failed_total;
        }
        shown.push(e);
    }
    totals.nodes = nodes.len();
    totals.edges_shown = shown.len();
    Model {
        source: ctx.source,
        prometheus_url: ctx.prometheus_url.clone(),
        group: q.group,
        window: q.window.clone(),
        window_seconds: q.window_duration.as_secs(),
        covered_seconds: covered,
        generated_at: ctx.generated_at.clone(),
        prices: PriceView {
            inter_az_usd_per_gb: ctx.prices.inter_az_nano_usd_per_gb as f64 / 1e9,
            nat_gateway_usd_per_gb: ctx.prices.nat_gateway_nano_usd_per_gb as f64 / 1e9,
        },
        filters: q.clone(),
        tables: tables(&shown),
        nodes: nodes.into_values().collect(),
        edges: shown,
        totals,
    }
}

fn node(end: &End, azs: Option<&BTreeSet<String>>) -> Node {
    let azs: Vec<String> = azs.map(|s| s.iter().cloned().collect()).unwrap_or_default();
    Node {
        id: end.id.clone(),
        kind: end.kind,
        label: end.label.clone(),
        cluster: end.cluster.clone(),
        az: if azs.len() == 1 { azs.first().cloned() } else { None },
        azs,
        aws_kind: end.aws_kind.clone(),
        bytes_in: 0,
        bytes_out: 0,
        connections: 0,
        failed: 0,
    }
}

/// Whether either end matches the (lower-case) search text.
fn matches(search: &str, a: &End, b: &End) -> bool {
    search.is_empty()
        || [a, b].iter().any(|e| {
            e.id.to_lowercase().contains(search)
                || e.label.to_lowercase().contains(search)
                || e.cluster.as_deref().is_some_and(|c| c.to_lowercase().contains(search))
        })
}

fn tables(edges: &[Edge]) -> Tables {
    let ids = |mut v: Vec<&Edge>, key: &dyn Fn(&Edge) -> f64| {
        v.sort_by(|a, b| key(b).total_cmp(&key(a)).then_with(|| a.id.cmp(&b.id)));
        v.into_iter().take(TABLE_ROWS).map(|e| e.id.clone()).collect::<Vec<_>>()
    };
    Tables {
        top_talkers: edges.iter().take(TABLE_ROWS).map(|e| e.id.clone()).collect(),
        top_cross_az_cost: ids(edges.iter().filter(|e| e.cost_usd > 0.0).collect(), &|e| e.cost_usd),
        top_failures: ids(edges.iter().filter(|e| e.failed_total > 0).collect(), &|e| e.failed_total as f64),
    }
}
