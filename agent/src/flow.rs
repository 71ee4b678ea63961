//! The flow record: Eddy's contract with users and with every later stage
//! (enrichment, aggregation, export). One record is one TCP connection, or one
//! UDP socket talking to one peer from one local address.
//!
//! Counters are totals since the flow was first seen (for connections opened
//! before the agent started: since the agent started, and `opened_at` is null).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub mod labels;

pub use labels::{EcsLabels, OwnerKind, RemoteAws};

/// Transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// Address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// Who opened the flow, seen from the local end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The local end connected (TCP) or sent first (UDP).
    Outgoing,
    /// The remote end connected (TCP) or sent first (UDP).
    Incoming,
    /// Opened before the agent started.
    Unknown,
}

/// Why a TCP connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failure {
    /// The peer answered the SYN with a RST (nothing listening).
    Refused,
    /// The connection was reset after it was established (either end).
    Reset,
    /// No answer: SYN or data retransmissions ran out.
    Timeout,
    /// An ICMP unreachable (host, network) ended the connection.
    Unreachable,
}

/// Where the remote end is, seen from this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Both ends on this host (any network namespace).
    SameHost,
    /// Another address of this VPC in this host's availability zone.
    SameAz,
    /// Another availability zone of this VPC.
    CrossAz,
    /// A private address outside this VPC (peering, transit gateway, another VPC's ENI).
    CrossVpc,
    /// A public address outside the VPC.
    Internet,
}

/// An address on the other side of a NAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Translation {
    pub addr: IpAddr,
    pub port: u16,
}

impl Translation {
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.addr, self.port)
    }
}

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
    /// ECS identity of this end, when an ECS provider runs (see [`crate::ecs`]); shared by
    /// every flow of the same container (see [`labels::Interner`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs: Option<Arc<EcsLabels>>,
    /// What owns this address in AWS, when enhanced resolution runs (see [`crate::aws`]);
    /// shared with the resolver's cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<Arc<RemoteAws>>,
}

impl Endpoint {
    pub fn new(addr: IpAddr, port: u16) -> Self {
        Endpoint { addr, port, ecs: None, aws: None }
    }

    pub fn socket_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.addr, self.port)
    }
}

/// A connection's flow record (see the README's API reference).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    pub protocol: Protocol,
    pub family: Family,
    pub direction: Direction,
    pub local: Endpoint,
    pub remote: Endpoint,
    /// Network namespace inode (as in `/proc/<pid>/ns/net`).
    pub netns: Option<u32>,
    /// cgroup v2 id of the socket.
    pub cgroup_id: Option<u64>,
    /// Process (tgid) that opened or first used the socket, when the kernel says so reliably.
    pub pid: Option<u32>,
    /// The process's command (shared by the records of one command, see
    /// [`crate::collector::ebpf::convert::Comms`]).
    pub comm: Option<Arc<str>>,
    /// Kernel socket cookie: unique per socket for the life of the boot.
    pub cookie: u64,
    /// Payload bytes written by the local end.
    pub bytes_sent: u64,
    /// Payload bytes read by the local end.
    pub bytes_received: u64,
    /// TCP: segments sent (incl. SYN, pure ACKs, FIN); UDP: datagrams.
    pub packets_sent: u64,
    /// TCP: segments received; UDP: datagrams.
    pub packets_received: u64,
    pub retransmits: u32,
    /// Smoothed round-trip time (TCP only).
    pub rtt_us: Option<u32>,
    /// Round-trip time mean deviation (TCP only).
    pub rtt_var_us: Option<u32>,
    pub failure: Option<Failure>,
    /// Where the remote end is (when ECS or AWS enrichment runs; absent when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// The remote end's address on the other side of a NAT on this host (conntrack), when one
    /// applied: for a connection this socket made to a DNAT'd address (a host port), where it
    /// really went (the container behind the port); for a connection that reached this socket
    /// masqueraded (SNAT), where it really came from. `remote` stays what the socket saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translation: Option<Translation>,
    #[serde(with = "rfc3339_opt")]
    pub opened_at: Option<SystemTime>,
    #[serde(with = "rfc3339_opt")]
    pub closed_at: Option<SystemTime>,
    /// An enricher was still looking an end up when the record was labelled (an AWS lookup in
    /// flight): better labels are coming, so the aggregator waits a little before it counts the
    /// open flow (see [`crate::aggregate`]). Not exported.
    #[serde(skip)]
    pub labels_pending: bool,
}

impl FlowRecord {
    /// An empty outgoing record between two addresses: what enrichers need to name the ends of
    /// something that is not a flow (a DNS query).
    pub fn probe(local: std::net::SocketAddr, remote: std::net::SocketAddr, tcp: bool) -> FlowRecord {
        FlowRecord {
            protocol: if tcp { Protocol::Tcp } else { Protocol::Udp },
            family: if local.is_ipv4() { Family::Ipv4 } else { Family::Ipv6 },
            direction: Direction::Outgoing,
            local: Endpoint::new(local.ip(), local.port()),
            remote: Endpoint::new(remote.ip(), remote.port()),
            netns: None,
            cgroup_id: None,
            pid: None,
            comm: None,
            cookie: 0,
            bytes_sent: 0,
            bytes_received: 0,
            packets_sent: 0,
            packets_received: 0,
            retransmits: 0,
            rtt_us: None,
            rtt_var_us: None,
            failure: None,
            scope: None,
            translation: None,
            opened_at: None,
            closed_at: None,
            labels_pending: false,
        }
    }

    /// True once the flow has ended and its counters are final.
    pub fn is_closed(&self) -> bool {
        self.closed_at.is_some()
    }

    /// A minimal record for tests: IPv4 outgoing 127.0.0.1:40000 → 127.0.0.1:80, all counters 0,
    /// closed at the epoch when `closed`.
    #[cfg(test)]
    pub fn test(protocol: Protocol, cookie: u64, closed: bool) -> FlowRecord {
        let ep = |port| std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
        FlowRecord {
            cookie,
            closed_at: closed.then_some(SystemTime::UNIX_EPOCH),
            ..FlowRecord::probe(ep(40000), ep(80), protocol == Protocol::Tcp)
        }
    }
}

mod rfc3339_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(&humantime::format_rfc3339_micros(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> FlowRecord {
        FlowRecord {
            protocol: Protocol::Tcp,
            family: Family::Ipv4,
            direction: Direction::Outgoing,
            local: Endpoint::new("10.0.0.1".parse().expect("ip"), 40000),
            remote: Endpoint::new("10.0.0.2".parse().expect("ip"), 443),
            netns: Some(4026531840),
            cgroup_id: Some(1),
            pid: Some(42),
            comm: Some("curl".into()),
            cookie: 7,
            bytes_sent: 1,
            bytes_received: 2,
            packets_sent: 3,
            packets_received: 4,
            retransmits: 0,
            rtt_us: Some(100),
            rtt_var_us: Some(10),
            failure: Some(Failure::Refused),
            opened_at: Some(SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456)),
            closed_at: None,
            scope: None,
            translation: None,
            labels_pending: false,
        }
    }

    #[test]
    fn encodes_contract_field_names_and_values() {
        let v = serde_json::to_value(sample()).expect("encode");
        assert_eq!(v["protocol"], "tcp");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["direction"], "outgoing");
        assert_eq!(v["local"]["addr"], "10.0.0.1");
        assert_eq!(v["remote"]["port"], 443);
        assert_eq!(v["failure"], "refused");
        assert_eq!(v["opened_at"], "2023-11-14T22:13:20.123456Z");
        assert!(v["closed_at"].is_null());
    }

    #[test]
    fn round_trips() {
        let r = sample();
        let back: FlowRecord =
            serde_json::from_str(&serde_json::to_string(&r).expect("encode")).expect("decode");
        assert_eq!(back, r);
    }
}
