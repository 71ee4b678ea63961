//! Socket samples of successive dumps → flow records: which sockets are flows, their
//! direction, their payload bytes (SYN and FIN excluded, as in the eBPF collector),
//! and which ones ended (vanished since the previous dump of their network namespace,
//! or with their namespace). Pure logic, no I/O.

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
    /// An AF_INET6 socket (dual-stack ones included): seen in the IPv6 dump.
    ipv6_socket: bool,
}

impl Tracked {
    /// Takes one sample's counters: they only grow while a socket lives; `last_ns` moves when
    /// any of them did.
    fn update(&mut self, state: u8, info: &TcpCounters, now_ns: u64) {
        let (sent, received) = payload_bytes(state, info, self.raw_received_before_fin);
        if !fin_received(state) && state != TCP_CLOSE {
            self.raw_received_before_fin = Some(info.bytes_received);
        }
        let r = &mut self.record;
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
            self.last_ns = now_ns;
        }
    }
}

/// What one scan produced.
#[derive(Debug, Default)]
pub struct ScanResult {
    pub live: Vec<Observed>,
    pub closed: Vec<Observed>,
    /// Sockets seen but not tracked because the tracker was full.
    pub over_capacity: u64,
}

/// The tracked sockets of one network namespace.
#[derive(Debug, Default)]
struct Namespace {
    flows: HashMap<u64, Tracked>,
    /// A dump of this namespace was applied before (its new sockets get an open time).
    scanned: bool,
}

/// Tracks sockets across dumps, keyed by network namespace and socket cookie (cookies are
/// per-namespace counters on kernels before 5.12); bounded by `capacity` sockets in all.
#[derive(Debug)]
pub struct Tracker {
    namespaces: HashMap<Option<u32>, Namespace>,
    len: usize,
    capacity: usize,
}

impl Tracker {
    pub fn new(capacity: usize) -> Self {
        Tracker { namespaces: HashMap::new(), len: 0, capacity: capacity.max(1) }
    }

    /// Sockets tracked now (open, or closed but still held by their application).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Namespaces with a dump applied and not forgotten since.
    pub fn namespaces(&self) -> Vec<Option<u32>> {
        self.namespaces.keys().copied().collect()
    }

    /// Whether namespace `netns` has tracked sockets of the IPv6 dump (`ipv6`) or the IPv4 one.
    pub fn has_flows(&self, netns: Option<u32>, ipv6: bool) -> bool {
        self.namespaces.get(&netns).is_some_and(|ns| ns.flows.values().any(|t| t.ipv6_socket == ipv6))
    }

    /// Applies one dump of namespace `netns` taken at `now_ns` (CLOCK_MONOTONIC). Only a
    /// `complete` dump closes the namespace's sockets missing from it; after an incomplete
    /// one they stay tracked (not live). Other namespaces are untouched.
    pub fn scan(
        &mut self,
        netns: Option<u32>,
        samples: &[Sample],
        complete: bool,
        now_ns: u64,
        clock: &dyn Clock,
    ) -> ScanResult {
        let ns = self.namespaces.entry(netns).or_default();
        let first = !ns.scanned;
        ns.scanned = true;
        // Listening sockets of this namespace only: a port is per namespace.
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
            if !ns.flows.contains_key(&s.cookie) {
                if self.len >= self.capacity {
                    out.over_capacity += 1;
                    continue;
                }
                self.len += 1;
            }
            seen.insert(s.cookie);
            let t = ns.flows.entry(s.cookie).or_insert_with(|| Tracked {
                record: new_record(s, &listeners, netns, (!first).then(|| clock.wall_at(now_ns))),
                last_ns: now_ns,
                raw_received_before_fin: None,
                reported_closed: false,
                ipv6_socket: s.local.is_ipv6(),
            });
            if t.reported_closed {
                continue;
            }
            t.update(s.state, &info, now_ns);
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
        let gone: Vec<u64> = ns.flows.keys().filter(|c| !seen.contains(c)).copied().collect();
        for cookie in gone {
            if let Some(mut t) = ns.flows.remove(&cookie) {
                self.len = self.len.saturating_sub(1);
                if !t.reported_closed {
                    t.record.closed_at = Some(clock.wall_at(now_ns));
                    out.closed.push(Observed { record: t.record, last_ns: now_ns });
                }
            }
        }
        out
    }

    /// Drops namespace `netns` (it vanished): its sockets not yet reported closed are
    /// reported closed now, with their last-seen counters.
    pub fn forget(&mut self, netns: Option<u32>, now_ns: u64, clock: &dyn Clock) -> Vec<Observed> {
        let Some(ns) = self.namespaces.remove(&netns) else { return Vec::new() };
        self.len = self.len.saturating_sub(ns.flows.len());
        ns.flows
            .into_values()
            .filter(|t| !t.reported_closed)
            .map(|mut t| {
                t.record.closed_at = Some(clock.wall_at(now_ns));
                Observed { record: t.record, last_ns: now_ns }
            })
            .collect()
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
