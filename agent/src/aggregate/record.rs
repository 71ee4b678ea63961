//! The per-interval aggregate record written as a JSON line (`"record": "aggregate"`),
//! flat so that CloudWatch Logs Insights can filter and sum its fields directly.

use std::time::SystemTime;

use serde::Serialize;

use super::{SeriesKey, SeriesValues};
use crate::flow::{Direction, Family, Protocol};

/// One series' deltas over one interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AggregateRecord {
    /// Always `aggregate` (flow records have no `record` field).
    pub record: &'static str,
    pub interval_start: String,
    pub interval_end: String,
    pub protocol: Protocol,
    pub family: Family,
    pub direction: Direction,
    pub local_addr: String,
    pub remote_addr: String,
    pub server_port: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub local_task: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub local_container: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub remote_task: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub remote_container: String,
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
}

impl AggregateRecord {
    pub fn new(k: SeriesKey, v: SeriesValues, start: SystemTime, end: SystemTime) -> Self {
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
            local_task: k.local_task,
            local_container: k.local_container,
            remote_task: k.remote_task,
            remote_container: k.remote_container,
            bytes_sent: v.bytes_sent,
            bytes_received: v.bytes_received,
            packets_sent: v.packets_sent,
            packets_received: v.packets_received,
            retransmits: v.retransmits,
            connections_opened: v.connections_opened,
            connections_closed: v.connections_closed,
            connections_failed: v.connections_failed.values().sum(),
            rtt_us_mean: (v.rtt.count > 0).then(|| v.rtt.sum_us / v.rtt.count),
        }
    }
}
