//! The per-interval aggregate record written as a JSON line (`"record": "aggregate"`),
//! flat so that CloudWatch Logs Insights can filter and sum its fields directly.

use std::time::SystemTime;

use serde::Serialize;

use super::{Prices, SeriesKey, SeriesValues};
use crate::flow::{Direction, Family, Protocol};

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One series' deltas over one interval. Empty labels and zero transfer fields are left out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AggregateRecord {
    /// Always `aggregate` (flow records have no `record` field).
    pub record: &'static str,
    pub interval_start: String,
    pub interval_end: String,
    pub protocol: Protocol,
    pub family: Family,
    pub direction: Direction,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub local_addr: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub remote_addr: String,
    pub server_port: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scope: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub local_cluster: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub local_service: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub local_task: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub local_container: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub local_az: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub remote_cluster: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub remote_service: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub remote_task: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub remote_container: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub remote_az: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub remote_kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub remote_name: String,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub retransmits: u64,
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub connections_failed: u64,
    /// Mean RTT of the TCP flows active in the interval (µs), if any.
    pub rtt_us_mean: Option<u64>,
    /// Cross-AZ bytes counted once (sent by the local end, or received from a managed peer).
    #[serde(skip_serializing_if = "is_zero")]
    pub cross_az_bytes: u64,
    /// Bytes both ways to a NAT gateway.
    #[serde(skip_serializing_if = "is_zero")]
    pub nat_gateway_bytes: u64,
    /// Estimated cost of both in USD (exact decimal as a JSON number).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_cost_usd: Option<f64>,
}

impl AggregateRecord {
    pub fn new(k: SeriesKey, v: SeriesValues, prices: &Prices, start: SystemTime, end: SystemTime) -> Self {
        let cost = v.transfer.cost(prices);
        AggregateRecord {
            record: "aggregate",
            interval_start: humantime::format_rfc3339_millis(start).to_string(),
            interval_end: humantime::format_rfc3339_millis(end).to_string(),
            protocol: k.protocol,
            family: k.family,
            direction: k.direction,
            local_addr: k.local_addr,
            remote_addr: k.remote_addr,
            server_port: k.server_port,
            scope: k.scope,
            local_cluster: k.local_cluster,
            local_service: k.local_service,
            local_task: k.local_task,
            local_container: k.local_container,
            local_az: k.local_az,
            remote_cluster: k.remote_cluster,
            remote_service: k.remote_service,
            remote_task: k.remote_task,
            remote_container: k.remote_container,
            remote_az: k.remote_az,
            remote_kind: k.remote_kind,
            remote_name: k.remote_name,
            bytes_sent: v.bytes_sent,
            bytes_received: v.bytes_received,
            packets_sent: v.packets_sent,
            packets_received: v.packets_received,
            retransmits: v.retransmits,
            connections_opened: v.connections_opened,
            connections_closed: v.connections_closed,
            connections_failed: v.connections_failed.values().sum(),
            rtt_us_mean: (v.rtt.count > 0).then(|| v.rtt.sum_us / v.rtt.count),
            cross_az_bytes: v.transfer.cross_az(),
            nat_gateway_bytes: v.transfer.nat_gateway,
            estimated_cost_usd: (!v.transfer.is_zero()).then(|| cost.as_f64()),
        }
    }
}
