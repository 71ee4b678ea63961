//! Socket samples of successive dumps → flow records: which sockets are flows, their
//! direction, their payload bytes (SYN and FIN excluded, as in the eBPF collector),
//! and which ones ended (vanished since the previous dump). Pure logic, no I/O.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use super::netlink::{Sample, TcpCounters};
use crate::clock::Clock;
use crate::collector::Observed;
use crate::flow::{Direction, FlowRecord};

/// TCP states (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_FIN_WAIT1: u8 = 4;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_TIME_WAIT: u8 = 6;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LAST_ACK: u8 = 9;
pub const TCP_LISTEN: u8 = 10;
pub const TCP_CLOSING: u8 = 11;

#[derive(Debug)]
struct Tracked {
    record: FlowRecord,
    last_ns: u64,
    /// Raw `bytes_received` last seen in a state where no FIN had arrived.
    raw_received_before_fin: Option<u64>,
    /// Already reported closed (the application still holds the socket in CLOSE).
    reported_closed: bool,
}

/// What one scan produced.
#[derive(Debug, Default)]
pub struct ScanResult {
    pub live: Vec<Observed>,
    pub closed: Vec<Observed>,
    /// Sockets seen but not tracked because the tracker was full.
    pub over_capacity: u64,
}

/// Tracks sockets across dumps, keyed by socket cookie; bounded by `capacity`.
#[derive(Debug)]
pub struct Tracker {
    flows: HashMap<u64, Tracked>,
    capacity: usize,
    scans: u64,
    netns: Option<u32>,
}

impl Tracker {
    pub fn new(capacity: usize, netns: Option<u32>) -> Self {
        Tracker { flows: HashMap::new(), capacity: capacity.max(1), scans: 0, netns }
    }

    /// Sockets tracked now (open, or closed but still held by their application).
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Applies one dump taken at `now_ns` (CLOCK_MONOTONIC). Only a `complete` dump closes
    /// the sockets missing from it; after an incomplete one they stay tracked (not live).
    pub fn scan(&mut self, samples: &[Sample], complete: bool, now_ns: u64, clock: &dyn Clock) -> ScanResult {
        let first = self.scans == 0;
        self.scans += 1;
        let listeners: HashSet<(IpAddr, u16)> = samples
            .iter()
            .filter(|s| s.state == TCP_LISTEN)
            .map(|s| (unmap(s.local.ip()), s.local.port()))
            .collect();
        let mut out = ScanResult::default();
        let mut seen: HashSet<u64> = HashSet::with_capacity(samples.len());
        for s in samples {
            let Some(info) = s.info else { continue };
            if s.state == TCP_LISTEN || s.remote.port() == 0 {
                continue;
            }
            if !self.flows.contains_key(&s.cookie) && self.flows.len() >= self.capacity {
                out.over_capacity += 1;
                continue;
            }
            seen.insert(s.cookie);
            let netns = self.netns;
            let t = self.flows.entry(s.cookie).or_insert_with(|| Tracked {
                record: new_record(s, &listeners, netns, (!first).then(|| clock.wall_at(now_ns))),
                last_ns: now_ns,
                raw_received_before_fin: None,
                reported_closed: false,
            });
            if t.reported_closed {
                continue;
            }
            let (sent, received) = payload_bytes(s.state, &info, t.raw_received_before_fin);
            if !fin_received(s.state) && s.state != TCP_CLOSE {
                t.raw_received_before_fin = Some(info.bytes_received);
            }
            let r = &mut t.record;
            let before = (r.bytes_sent, r.bytes_received, r.packets_sent, r.packets_received, r.retransmits);
            // Counters only grow while a socket lives (tcp_disconnect() zeroes them): keep the largest.
            r.bytes_sent = r.bytes_sent.max(sent);
            r.bytes_received = r.bytes_received.max(received);
            r.packets_sent = r.packets_sent.max(info.segs_out.into());
            r.packets_received = r.packets_received.max(info.segs_in.into());
            r.retransmits = r.retransmits.max(info.total_retrans);
            r.rtt_us = Some(info.rtt_us);
            r.rtt_var_us = Some(info.rttvar_us);
            if before != (r.bytes_sent, r.bytes_received, r.packets_sent, r.packets_received, r.retransmits) {
                t.last_ns = now_ns;
            }
            if s.state == TCP_CLOSE {
                // Ended; the application has not closed the descriptor yet.
                t.reported_closed = true;
                t.last_ns = now_ns;
                t.record.closed_at = Some(clock.wall_at(now_ns));
                out.closed.push(Observed { record: t.record.clone(), last_ns: now_ns });
            } else {
                out.live.push(Observed { record: t.record.clone(), last_ns: t.last_ns });
            }
        }
        if !complete {
            return out;
        }
        let gone: Vec<u64> = self.flows.keys().filter(|c| !seen.contains(c)).copied().collect();
        for cookie in gone {
            if let Some(mut t) = self.flows.remove(&cookie)
                && !t.reported_closed
            {
                t.record.closed_at = Some(clock.wall_at(now_ns));
                out.closed.push(Observed { record: t.record, last_ns: now_ns });
            }
        }
        out
    }
}

/// Whether the peer's FIN has certainly arrived in this state.
fn fin_received(state: u8) -> bool {
    matches!(state, TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING | TCP_TIME_WAIT)
}

/// Payload bytes (sent, received): data sent minus retransmitted data, and received
/// bytes minus the FIN that `tcpi_bytes_received` counts as one byte. In CLOSE (normal
/// end or reset) the FIN is assumed unless the raw count has not moved since a state
/// before any FIN (then the connection was reset, or closed before the peer's FIN).
pub fn payload_bytes(state: u8, info: &TcpCounters, raw_before_fin: Option<u64>) -> (u64, u64) {
    let sent = info.bytes_sent.saturating_sub(info.bytes_retrans);
    let raw = info.bytes_received;
    let fin = fin_received(state) || (state == TCP_CLOSE && raw_before_fin != Some(raw));
    (sent, if fin { raw.saturating_sub(1) } else { raw })
}

/// IPv4-mapped IPv6 addresses (dual-stack sockets) become IPv4.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Incoming when a listening socket holds the local port (same address or a wildcard).
fn direction(local: SocketAddr, listeners: &HashSet<(IpAddr, u16)>) -> Direction {
    let ip = unmap(local.ip());
    let wildcard_v4 = IpAddr::from([0u8; 4]);
    let wildcard_v6 = IpAddr::from([0u16; 8]);
    let port = local.port();
    if [ip, wildcard_v4, wildcard_v6].iter().any(|a| listeners.contains(&(*a, port))) {
        Direction::Incoming
    } else {
        Direction::Outgoing
    }
}

fn new_record(
    s: &Sample,
    listeners: &HashSet<(IpAddr, u16)>,
    netns: Option<u32>,
    opened_at: Option<std::time::SystemTime>,
) -> FlowRecord {
    let local = std::net::SocketAddr::new(unmap(s.local.ip()), s.local.port());
    let remote = std::net::SocketAddr::new(unmap(s.remote.ip()), s.remote.port());
    FlowRecord {
        direction: direction(s.local, listeners),
        netns,
        cgroup_id: s.cgroup_id,
        cookie: s.cookie,
        opened_at,
        ..FlowRecord::probe(local, remote, true)
    }
}

#[cfg(test)]
mod tests;
