//! DNS families of `/metrics`: queries, responses by rcode, timeouts and latency quantiles per
//! (client, server, name, qtype) row of [`crate::dns`], and the tracker's own counters (`/status`
//! → `dns`): packets not counted, and every fold, drop and expiry that keeps it bounded.

use super::{Kind, Writer};
use crate::dns::{DnsCounters, DnsRow};

fn labels(r: &DnsRow) -> Vec<(&'static str, &str)> {
    vec![("client", &r.client), ("server", &r.server), ("name", &r.name), ("qtype", &r.qtype)]
}

type Quantile = (&'static str, &'static str, fn(&DnsRow) -> Option<u64>);

type Counter = (&'static str, &'static str, fn(&DnsCounters) -> u64);

/// The tracker's counters and fill gauges (`counters` is `None` when DNS monitoring is off).
fn health(w: &mut Writer, counters: Option<&DnsCounters>) {
    let Some(c) = counters else { return };
    let totals: [Counter; 9] = [
        ("eddy_dns_packets", "DNS packets seen (both directions, client and server side).", |c| c.packets),
        ("eddy_dns_malformed", "DNS packets the parser rejected.", |c| c.malformed),
        ("eddy_dns_unparsed", "TCP segments not starting with a whole DNS message.", |c| c.unparsed),
        ("eddy_dns_server_side", "Packets of DNS servers on this host (not counted as queries).", |c| {
            c.server_side
        }),
        ("eddy_dns_unmatched_responses", "DNS responses without a pending query.", |c| c.unmatched_responses),
        (
            "eddy_dns_pending_full",
            "DNS queries not tracked for an answer: the pending table was full.",
            |c| c.pending_full,
        ),
        ("eddy_dns_names_folded", "Query names folded into `other` to keep dns_max_names.", |c| {
            c.names_folded
        }),
        ("eddy_dns_rows_folded", "Updates counted in an overflow row: the DNS row table was full.", |c| {
            c.series_folded
        }),
        ("eddy_dns_rows_expired", "DNS rows dropped after an hour without an update.", |c| c.rows_expired),
    ];
    for (name, help, get) in totals {
        w.family(name, Kind::Counter, help);
        w.sample(&format!("{name}_total"), &[], get(c));
    }
    let gauges: [Counter; 4] = [
        ("eddy_dns_pending", "DNS queries waiting for an answer.", |c| c.pending),
        ("eddy_dns_names", "Query names with their own rows.", |c| c.names),
        ("eddy_dns_rows", "DNS statistics rows.", |c| c.rows),
        ("eddy_dns_rows_limit", "Maximum number of DNS statistics rows.", |c| c.max_rows),
    ];
    for (name, help, get) in gauges {
        w.family(name, Kind::Gauge, help);
        w.sample(name, &[], get(c));
    }
}

pub(super) fn render(w: &mut Writer, rows: &[DnsRow], counters: Option<&DnsCounters>) {
    health(w, counters);
    if rows.is_empty() {
        return;
    }
    use crate::catalog::{DNS_QUERIES, DNS_RESPONSES, DNS_TIMEOUTS};
    w.family(DNS_QUERIES.prometheus, Kind::Counter, DNS_QUERIES.help);
    for r in rows {
        w.sample(&format!("{}_total", DNS_QUERIES.prometheus), &labels(r), r.queries);
    }
    w.family(DNS_RESPONSES.prometheus, Kind::Counter, DNS_RESPONSES.help);
    for r in rows {
        for (rcode, n) in &r.rcodes {
            let mut l = labels(r);
            l.push(("rcode", rcode));
            w.sample(&format!("{}_total", DNS_RESPONSES.prometheus), &l, n);
        }
    }
    w.family(DNS_TIMEOUTS.prometheus, Kind::Counter, DNS_TIMEOUTS.help);
    for r in rows {
        w.sample(&format!("{}_total", DNS_TIMEOUTS.prometheus), &labels(r), r.timeouts);
    }
    let quantiles: [Quantile; 3] = [
        ("eddy_dns_latency_p50_seconds", "Median DNS response time since the agent started.", |r| {
            r.latency_us.p50
        }),
        ("eddy_dns_latency_p99_seconds", "99th percentile DNS response time since the agent started.", |r| {
            r.latency_us.p99
        }),
        ("eddy_dns_latency_max_seconds", "Slowest DNS response since the agent started.", |r| {
            r.latency_us.max
        }),
    ];
    for (name, help, get) in quantiles {
        w.family(name, Kind::Gauge, help);
        for r in rows {
            if let Some(us) = get(r) {
                w.sample(name, &labels(r), us as f64 / 1e6);
            }
        }
    }
}
