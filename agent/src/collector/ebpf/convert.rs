//! Raw kernel records (`eddy_ebpf::Flow`) → domain [`FlowRecord`]s: the one
//! place where addresses, times, directions and failures are decoded.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use eddy_ebpf::shared as k;
use eddy_ebpf::{Flow, Tuple};

use crate::clock::Clock;
use crate::collector::Observed;
use crate::flow::{Direction, Endpoint, Failure, Family, FlowRecord, Protocol};

const AF_INET6: u16 = 10;
const IPPROTO_UDP: u8 = 17;

/// Command names seen, one shared copy each (a host has a few hundred commands and up to
/// hundreds of thousands of flows). Bounded: emptied when it holds [`Comms::MAX`] names.
#[derive(Debug, Default)]
pub struct Comms {
    names: HashMap<[u8; 16], Arc<str>>,
}

impl Comms {
    pub const MAX: usize = 4096;

    /// The shared name of a kernel `comm` (NUL-terminated, 16 bytes; empty: `None`).
    pub fn get(&mut self, raw: &[u8; 16]) -> Option<Arc<str>> {
        if let Some(name) = self.names.get(raw) {
            return Some(name.clone());
        }
        let name: Arc<str> = comm(raw)?.into();
        if self.names.len() >= Self::MAX {
            self.names.clear();
        }
        self.names.insert(*raw, name.clone());
        Some(name)
    }
}

/// Converts one raw record. Zero values mean "unknown" in the kernel struct.
pub fn to_record(f: &Flow, clock: &dyn Clock, comms: &mut Comms) -> Observed {
    let protocol = if f.tuple.protocol == IPPROTO_UDP { Protocol::Udp } else { Protocol::Tcp };
    let (local, remote) = endpoints(&f.tuple);
    let family = if local.addr.is_ipv4() { Family::Ipv4 } else { Family::Ipv6 };
    let established = f.flags as u32 & k::FLAG_ESTABLISHED != 0;
    let closed = f.flags as u32 & k::FLAG_CLOSED != 0 || f.closed_ns != 0;
    let tcp = protocol == Protocol::Tcp;
    let record = FlowRecord {
        protocol,
        family,
        direction: direction(f.direction),
        local,
        remote,
        netns: nonzero(f.netns_ino),
        cgroup_id: (f.cgroup_id != 0).then_some(f.cgroup_id),
        pid: nonzero(f.pid),
        comm: comms.get(&f.comm),
        cookie: f.cookie,
        bytes_sent: f.bytes_sent,
        bytes_received: f.bytes_received,
        packets_sent: f.packets_sent,
        packets_received: f.packets_received,
        retransmits: f.retransmits,
        rtt_us: tcp.then_some(f.rtt_us),
        rtt_var_us: tcp.then_some(f.rtt_var_us),
        failure: if tcp && closed { classify(established, f.sk_err) } else { None },
        opened_at: (f.opened_ns != 0).then(|| clock.wall_at(f.opened_ns)),
        closed_at: (f.closed_ns != 0).then(|| clock.wall_at(f.closed_ns)),
        scope: None,
        translation: None,
        labels_pending: false,
    };
    Observed { record, last_ns: f.last_ns }
}

/// A DNS packet of the `DNS_EVENTS` ring buffer, in domain types.
pub fn dns_packet(ev: &eddy_ebpf::DnsEvent) -> crate::dns::DnsPacket {
    let (local, remote) = endpoints(&ev.tuple);
    let captured = usize::from(ev.captured).min(ev.payload.len());
    crate::dns::DnsPacket {
        local: local.socket_addr(),
        remote: remote.socket_addr(),
        tcp: ev.tuple.protocol != IPPROTO_UDP,
        outgoing: ev.direction as u32 == k::DIR_OUTGOING,
        ts_ns: ev.ts_ns,
        cgroup_id: (ev.cgroup_id != 0).then_some(ev.cgroup_id),
        pid: nonzero(ev.pid),
        netns: nonzero(ev.netns_ino),
        comm: comm(&ev.comm),
        wire_len: ev.wire_len,
        payload: ev.payload[..captured].to_vec(),
    }
}

fn nonzero(v: u32) -> Option<u32> {
    (v != 0).then_some(v)
}

fn direction(d: u8) -> Direction {
    match d as u32 {
        k::DIR_OUTGOING => Direction::Outgoing,
        k::DIR_INCOMING => Direction::Incoming,
        _ => Direction::Unknown,
    }
}

pub fn comm(raw: &[u8; 16]) -> Option<String> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    (end > 0).then(|| String::from_utf8_lossy(&raw[..end]).into_owned())
}

/// Both ends; IPv4-mapped IPv6 addresses (dual-stack sockets) become IPv4.
pub fn endpoints(t: &Tuple) -> (Endpoint, Endpoint) {
    let addr = |b: &[u8; 16]| -> IpAddr {
        if t.family == AF_INET6 {
            let v6 = Ipv6Addr::from(*b);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        } else {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
    };
    (Endpoint::new(addr(&t.local_addr), t.local_port), Endpoint::new(addr(&t.remote_addr), t.remote_port))
}

/// Failure of a closed TCP connection from the socket error kept at close.
pub fn classify(established: bool, sk_err: i32) -> Option<Failure> {
    match sk_err {
        0 => None,
        libc::ECONNREFUSED if !established => Some(Failure::Refused),
        libc::ECONNREFUSED | libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED => Some(Failure::Reset),
        libc::ETIMEDOUT => Some(Failure::Timeout),
        libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN | libc::ENETDOWN => {
            Some(Failure::Unreachable)
        }
        _ if established => Some(Failure::Reset),
        _ => Some(Failure::Unreachable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use std::time::{Duration, SystemTime};

    fn raw_v4() -> Flow {
        let mut f = Flow::default();
        f.tuple.family = 2;
        f.tuple.protocol = 6;
        f.tuple.local_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        f.tuple.remote_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        f.tuple.local_port = 40000;
        f.tuple.remote_port = 80;
        f.cookie = 9;
        f.opened_ns = 1_000_000_000;
        f.direction = k::DIR_OUTGOING as u8;
        f.comm[..4].copy_from_slice(b"curl");
        f
    }

    #[test]
    fn decodes_ipv4_tcp() {
        let clock = FakeClock::at(5_000_000_000);
        let mut f = raw_v4();
        f.bytes_sent = 10;
        f.rtt_us = 99;
        let o = to_record(&f, &clock, &mut Comms::default());
        let r = o.record;
        assert_eq!(r.local.addr, "10.0.0.1".parse::<IpAddr>().expect("ip"));
        assert_eq!(r.remote.port, 80);
        assert_eq!(r.family, Family::Ipv4);
        assert_eq!(r.direction, Direction::Outgoing);
        assert_eq!(r.comm.as_deref(), Some("curl"));
        assert_eq!(r.pid, None);
        assert_eq!(r.rtt_us, Some(99));
        assert_eq!(r.failure, None, "open flows have no failure");
        assert_eq!(r.opened_at, Some(SystemTime::UNIX_EPOCH + FakeClock::EPOCH + Duration::from_secs(1)));
        assert_eq!(r.closed_at, None);
    }

    #[test]
    fn decodes_ipv6_and_mapped_ipv4() {
        let clock = FakeClock::at(0);
        let mut f = raw_v4();
        f.tuple.family = AF_INET6;
        f.tuple.local_addr = "fd00::1".parse::<Ipv6Addr>().expect("ip").octets();
        f.tuple.remote_addr = "::ffff:10.1.2.3".parse::<Ipv6Addr>().expect("ip").octets();
        let r = to_record(&f, &clock, &mut Comms::default()).record;
        assert_eq!(r.local.addr, "fd00::1".parse::<IpAddr>().expect("ip"));
        assert_eq!(r.remote.addr, "10.1.2.3".parse::<IpAddr>().expect("ip"));
        assert_eq!(r.family, Family::Ipv6);
    }

    #[test]
    fn udp_has_no_rtt_or_failure() {
        let clock = FakeClock::at(0);
        let mut f = raw_v4();
        f.tuple.protocol = IPPROTO_UDP;
        f.closed_ns = 5;
        f.sk_err = libc::ECONNREFUSED;
        let r = to_record(&f, &clock, &mut Comms::default()).record;
        assert_eq!(r.protocol, Protocol::Udp);
        assert_eq!(r.rtt_us, None);
        assert_eq!(r.failure, None);
    }

    #[test]
    fn failure_state_machine() {
        assert_eq!(classify(false, libc::ECONNREFUSED), Some(Failure::Refused));
        assert_eq!(classify(true, libc::ECONNRESET), Some(Failure::Reset));
        assert_eq!(classify(true, libc::EPIPE), Some(Failure::Reset));
        assert_eq!(classify(false, libc::ETIMEDOUT), Some(Failure::Timeout));
        assert_eq!(classify(true, libc::ETIMEDOUT), Some(Failure::Timeout));
        assert_eq!(classify(false, libc::EHOSTUNREACH), Some(Failure::Unreachable));
        assert_eq!(classify(false, libc::ENETUNREACH), Some(Failure::Unreachable));
        assert_eq!(classify(true, 0), None);
        assert_eq!(classify(false, 0), None, "closed by the application before the handshake");
    }

    #[test]
    fn closed_flag_enables_failure() {
        let clock = FakeClock::at(0);
        let mut f = raw_v4();
        f.flags = (k::FLAG_CLOSED | k::FLAG_SYN_SENT) as u8;
        f.sk_err = libc::ECONNREFUSED;
        assert_eq!(to_record(&f, &clock, &mut Comms::default()).record.failure, Some(Failure::Refused));
    }
}
