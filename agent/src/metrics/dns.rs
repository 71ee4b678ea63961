//! DNS families of `/metrics`: queries, responses by rcode, timeouts and latency quantiles per
//! (client, server, name, qtype) row of [`crate::dns`].

use super::{Kind, Writer};
use crate::dns::DnsRow;

fn labels(r: &DnsRow) -> Vec<(&'static str, &str)> {
    vec![("client", &r.client), ("server", &r.server), ("name", &r.name), ("qtype", &r.qtype)]
}

type Quantile = (&'static str, &'static str, fn(&DnsRow) -> Option<u64>);

pub(super) fn render(w: &mut Writer, rows: &[DnsRow]) {
    if rows.is_empty() {
        return;
    }
    w.family("eddy_dns_queries", Kind::Counter, "DNS queries sent by the client.");
    for r in rows {
        w.sample("eddy_dns_queries_total", &labels(r), r.queries);
    }
    w.family("eddy_dns_responses", Kind::Counter, "DNS responses received, by response code.");
    for r in rows {
        for (rcode, n) in &r.rcodes {
            let mut l = labels(r);
            l.push(("rcode", rcode));
            w.sample("eddy_dns_responses_total", &l, n);
        }
    }
    w.family("eddy_dns_timeouts", Kind::Counter, "DNS queries without an answer within dns_timeout.");
    for r in rows {
        w.sample("eddy_dns_timeouts_total", &labels(r), r.timeouts);
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
