//! The exported quantities, named once for both exporters: the Prometheus family (name and
//! help) and the OTLP metric (name, unit, description) of each, and where its value comes from.
//! `/metrics` ([`crate::metrics`]) and OTLP ([`crate::otlp::encode`]) both read this table, so the
//! two cannot drift apart.
//!
//! A [`Quantity`] is one OTLP metric; its [`Part`]s are its Prometheus families (one per
//! direction where OTLP has a `network.io.direction` attribute instead).

use crate::aggregate::SeriesValues;

/// One Prometheus family of a quantity (and its OTLP direction, if any).
#[derive(Clone, Copy, Debug)]
pub struct Part {
    /// `network.io.direction` of the OTLP data point (`None`: no direction attribute).
    pub direction: Option<&'static str>,
    /// Family name (counters without `_total`).
    pub prometheus: &'static str,
    pub help: &'static str,
    pub value: fn(&SeriesValues) -> u64,
}

/// One OTLP metric of the per-series counters.
#[derive(Clone, Copy, Debug)]
pub struct Quantity {
    pub otlp: &'static str,
    pub unit: &'static str,
    pub description: &'static str,
    pub parts: &'static [Part],
}

/// A quantity whose values are not one number per series (by reason, a histogram, DNS rows):
/// its names only.
#[derive(Clone, Copy, Debug)]
pub struct Named {
    pub prometheus: &'static str,
    pub help: &'static str,
    pub otlp: &'static str,
    pub unit: &'static str,
    pub description: &'static str,
}

/// The per-series counters, one number per series (and direction).
pub const SERIES_COUNTERS: &[Quantity] = &[
    Quantity {
        otlp: "eddy.network.io",
        unit: "By",
        description: "Payload bytes transmitted and received by the local end.",
        parts: &[
            Part {
                direction: Some("transmit"),
                prometheus: "eddy_flow_sent_bytes",
                help: "Payload bytes sent by the local end.",
                value: |v| v.bytes_sent,
            },
            Part {
                direction: Some("receive"),
                prometheus: "eddy_flow_received_bytes",
                help: "Payload bytes received by the local end.",
                value: |v| v.bytes_received,
            },
        ],
    },
    Quantity {
        otlp: "eddy.network.packets",
        unit: "{packet}",
        description: "TCP segments and UDP datagrams transmitted and received.",
        parts: &[
            Part {
                direction: Some("transmit"),
                prometheus: "eddy_flow_sent_packets",
                help: "Packets (TCP segments, UDP datagrams) sent.",
                value: |v| v.packets_sent,
            },
            Part {
                direction: Some("receive"),
                prometheus: "eddy_flow_received_packets",
                help: "Packets (TCP segments, UDP datagrams) received.",
                value: |v| v.packets_received,
            },
        ],
    },
    Quantity {
        otlp: "eddy.tcp.retransmits",
        unit: "{segment}",
        description: "TCP segments retransmitted.",
        parts: &[Part {
            direction: None,
            prometheus: "eddy_tcp_retransmits",
            help: "TCP segments retransmitted.",
            value: |v| v.retransmits,
        }],
    },
    Quantity {
        otlp: "eddy.connections.opened",
        unit: "{connection}",
        description: "Flows seen opening.",
        parts: &[Part {
            direction: None,
            prometheus: "eddy_connections_opened",
            help: "Flows seen opening (TCP connections, UDP socket-peer pairs).",
            value: |v| v.connections_opened,
        }],
    },
    Quantity {
        otlp: "eddy.connections.closed",
        unit: "{connection}",
        description: "Flows seen closing.",
        parts: &[Part {
            direction: None,
            prometheus: "eddy_connections_closed",
            help: "Flows seen closing.",
            value: |v| v.connections_closed,
        }],
    },
];

pub const CONNECTIONS_FAILED: Named = Named {
    prometheus: "eddy_connections_failed",
    help: "TCP connections that failed, by reason.",
    otlp: "eddy.connections.failed",
    unit: "{connection}",
    description: "Failed TCP connections, by reason (error.type).",
};

pub const TCP_RTT: Named = Named {
    prometheus: "eddy_tcp_rtt_seconds",
    help: "Smoothed TCP round-trip time of active flows, per interval.",
    otlp: "eddy.tcp.rtt",
    unit: "s",
    description: "Smoothed TCP round-trip time of active flows, per interval.",
};

pub const CROSS_AZ_BYTES: Named = Named {
    prometheus: "eddy_cross_az_bytes",
    help: "Cross-AZ payload bytes counted once per workload pair: sent by the local end, or received from an AWS-managed peer (transfer).",
    otlp: "eddy.cross_az.io",
    unit: "By",
    description: "Cross-AZ payload bytes counted once per workload pair (network.io.direction: transmit = sent by the local end, receive = from an AWS-managed peer).",
};

pub const NAT_GATEWAY_BYTES: Named = Named {
    prometheus: "eddy_nat_gateway_bytes",
    help: "Payload bytes both ways between the local end and a NAT gateway, per workload pair.",
    otlp: "eddy.nat_gateway.io",
    unit: "By",
    description: "Payload bytes both ways between the local end and a NAT gateway, per workload pair.",
};

pub const TRANSFER_COST: Named = Named {
    prometheus: "eddy_estimated_transfer_cost_usd",
    help: "Estimated data transfer cost in USD per workload pair, by charge (cross_az, nat_gateway), from the configured prices.",
    otlp: "eddy.transfer.cost",
    unit: "{USD}",
    description: "Estimated data transfer cost in USD per workload pair, by charge (eddy.transfer.charge: cross_az, nat_gateway).",
};

pub const DNS_QUERIES: Named = Named {
    prometheus: "eddy_dns_queries",
    help: "DNS queries sent by the client.",
    otlp: "eddy.dns.queries",
    unit: "{query}",
    description: "DNS queries sent by the client.",
};

pub const DNS_RESPONSES: Named = Named {
    prometheus: "eddy_dns_responses",
    help: "DNS responses received, by response code.",
    otlp: "eddy.dns.responses",
    unit: "{response}",
    description: "DNS responses received, by response code.",
};

pub const DNS_TIMEOUTS: Named = Named {
    prometheus: "eddy_dns_timeouts",
    help: "DNS queries without an answer within dns_timeout.",
    otlp: "eddy.dns.timeouts",
    unit: "{query}",
    description: "DNS queries without an answer within dns_timeout.",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_each_exporters_conventions_and_are_unique() {
        let mut prom: Vec<&str> =
            SERIES_COUNTERS.iter().flat_map(|q| q.parts.iter().map(|p| p.prometheus)).collect();
        let named = [
            CONNECTIONS_FAILED,
            TCP_RTT,
            CROSS_AZ_BYTES,
            NAT_GATEWAY_BYTES,
            TRANSFER_COST,
            DNS_QUERIES,
            DNS_RESPONSES,
            DNS_TIMEOUTS,
        ];
        prom.extend(named.iter().map(|n| n.prometheus));
        let mut otlp: Vec<&str> = SERIES_COUNTERS.iter().map(|q| q.otlp).collect();
        otlp.extend(named.iter().map(|n| n.otlp));
        for p in &prom {
            assert!(p.starts_with("eddy_") && !p.ends_with("_total") && !p.contains('.'), "{p}");
        }
        for o in &otlp {
            let ok = !o.contains('_') || o.contains("cross_az") || o.contains("nat_gateway");
            assert!(o.starts_with("eddy.") && ok, "{o}");
        }
        let (n, m) = (prom.len(), otlp.len());
        prom.sort();
        prom.dedup();
        otlp.sort();
        otlp.dedup();
        assert_eq!((prom.len(), otlp.len()), (n, m), "duplicate names");
    }
}
