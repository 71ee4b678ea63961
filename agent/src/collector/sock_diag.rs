//! The `sock_diag` collector: polls the kernel's socket table over netlink
//! (`NETLINK_SOCK_DIAG`, INET_DIAG dumps with `tcp_info`) instead of loading eBPF
//! programs. It needs no privileges, so it runs on Fargate and wherever eBPF cannot
//! load (no CAP_BPF, no BTF).
//!
//! How: every `poll(scan_live = true)` dumps all TCP sockets (IPv4 and IPv6) of the
//! agent's network namespace ([`netlink`]); [`track`] keys them by socket cookie,
//! decides the direction from listening sockets (a connection on a listening port is
//! incoming), converts `tcp_info` with the eBPF collector's semantics (payload bytes
//! without SYN/FIN: `bytes_sent - bytes_retrans` and `bytes_received` less a received
//! FIN; packets = segments; retransmits = `total_retrans`; smoothed RTT) and reports
//! sockets that vanished since the previous dump as closed, with their last-seen
//! counters. Polls between scans return an empty batch at once.
//!
//! Limits (also in `/status`): connections that open and close between two polls are
//! missed, unless the application still holds the closed socket at the next poll;
//! bytes that flow after the last poll of a connection are missed; `opened_at` is the
//! time of the poll that first saw the connection; pid, process name and failure
//! reasons are unknown; UDP is not seen (sock_diag has no UDP byte or packet counters).
//! Only the agent's own network namespace is visible (on Fargate: the task's). Needs
//! Linux 5.4+ (the `tcp_info` layout the parser expects); a dump with messages that
//! do not decode, or beyond the dump limit, closes nothing (sockets missing from it may
//! still exist).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use super::{Batch, CollectorError, FlowSource, HookStatus, MapStatus, Rejected, SourceStatus};
use crate::clock::Clock;

pub mod netlink;
pub mod track;

/// Collector kind, as `/status` shows it.
pub const KIND: &str = "sock_diag";
/// What `/status` shows as the chosen TCP hook.
pub const TCP_HOOK: &str = "netlink sock_diag (INET_DIAG, tcp_info)";
/// What the collector cannot see.
pub const TCP_LIMITS: &str =
    "misses connections that open and close between two polls; bytes after the last poll";
const UDP_NOT_SEEN: &str =
    "UDP is not seen in sock_diag mode: sock_diag reports no UDP byte or packet counters";

/// Why a sock_diag dump failed.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    #[error("netlink sock_diag {op} failed: {source}")]
    Io { op: &'static str, source: std::io::Error },
    #[error("the kernel refused the sock_diag dump: {0}")]
    Kernel(std::io::Error),
    #[error("the sock_diag dump ended without its final message")]
    Truncated,
}

impl From<SockDiagError> for CollectorError {
    fn from(e: SockDiagError) -> Self {
        CollectorError::SockDiag(e)
    }
}

/// Settings of the sock_diag collector.
#[derive(Clone, Debug)]
pub struct SockDiagSettings {
    /// Most sockets tracked at once (from `flow_map_entries`); more are counted as drops.
    pub max_sockets: u32,
}

/// Polls the socket table of the agent's network namespace.
pub struct SockDiagSource {
    tracker: track::Tracker,
    clock: Arc<dyn Clock>,
    max_sockets: u32,
    sockets_seen: u64,
    scans: u64,
    netlink_errors: u64,
    undecodable: u64,
    over_capacity: u64,
    dump_limit_hits: u64,
    closed_total: u64,
}

impl SockDiagSource {
    /// Opens nothing yet; checks that one dump works (so a kernel without sock_diag
    /// fails at startup, not at the first poll).
    pub fn start(settings: SockDiagSettings, clock: Arc<dyn Clock>) -> Result<Self, CollectorError> {
        netlink::dump_tcp(false, &mut netlink::Dump::default(), 1)?;
        let netns = std::fs::metadata("/proc/self/ns/net").ok().and_then(|m| u32::try_from(m.ino()).ok());
        Ok(SockDiagSource {
            tracker: track::Tracker::new(settings.max_sockets as usize, netns),
            clock,
            max_sockets: settings.max_sockets,
            sockets_seen: 0,
            scans: 0,
            netlink_errors: 0,
            undecodable: 0,
            over_capacity: 0,
            dump_limit_hits: 0,
            closed_total: 0,
        })
    }

    /// Samples of both families, at most `4 × max_sockets` (listeners and TIME_WAIT included).
    fn dump(&mut self) -> Result<netlink::Dump, SockDiagError> {
        let limit = (self.max_sockets as usize).saturating_mul(4);
        let mut dump = netlink::Dump::default();
        let v4 = netlink::dump_tcp(false, &mut dump, limit);
        let v6 = netlink::dump_tcp(true, &mut dump, limit);
        self.undecodable += dump.undecodable;
        self.dump_limit_hits += dump.over_limit;
        v4.and(v6).map(|()| dump)
    }
}

impl FlowSource for SockDiagSource {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn poll(&mut self, scan_live: bool) -> Result<Batch, CollectorError> {
        if !scan_live {
            return Ok(Batch::default());
        }
        let dump = match self.dump() {
            Ok(d) => d,
            Err(e) => {
                // An incomplete dump would report every missing socket as closed: skip it.
                self.netlink_errors += 1;
                return Err(e.into());
            }
        };
        self.scans += 1;
        self.sockets_seen += dump.samples.len() as u64;
        let now = self.clock.mono_now_ns();
        let complete = dump.undecodable == 0 && dump.over_limit == 0;
        let r = self.tracker.scan(&dump.samples, complete, now, self.clock.as_ref());
        self.over_capacity += r.over_capacity;
        self.closed_total += r.closed.len() as u64;
        Ok(Batch { closed: r.closed, live: Some(r.live) })
    }

    fn status(&self) -> SourceStatus {
        let hooks = vec![
            HookStatus {
                capability: "tcp",
                chosen: Some(TCP_HOOK.into()),
                rejected: vec![Rejected { hook: "limit".into(), reason: TCP_LIMITS.into() }],
            },
            HookStatus {
                capability: "udp",
                chosen: None,
                rejected: vec![Rejected {
                    hook: "netlink sock_diag (INET_DIAG, udp)".into(),
                    reason: UDP_NOT_SEEN.into(),
                }],
            },
        ];
        let drops = BTreeMap::from([
            ("sockets_over_capacity", self.over_capacity),
            ("sockets_over_dump_limit", self.dump_limit_hits),
            ("netlink_undecodable_messages", self.undecodable),
        ]);
        let counters = BTreeMap::from([
            ("sockets_seen", self.sockets_seen),
            ("sock_diag_scans", self.scans),
            ("netlink_errors", self.netlink_errors),
            ("tcp_closed", self.closed_total),
        ]);
        SourceStatus {
            hooks,
            maps: vec![MapStatus {
                name: "sock_diag_sockets",
                capacity: self.max_sockets.into(),
                entries: Some(self.tracker.len() as u64),
            }],
            drops,
            counters,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::*;
    use crate::clock::SystemClock;
    use crate::flow::Direction;

    /// A real dump of this process's namespace (loopback only; no privileges needed).
    #[test]
    fn dumps_a_loopback_connection_with_exact_bytes() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let server_addr = listener.local_addr().expect("addr");
        let mut client = TcpStream::connect(server_addr).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        client.write_all(&[7u8; 3_000]).expect("write");
        let mut buf = vec![0u8; 3_000];
        server.read_exact(&mut buf).expect("read");
        server.write_all(&[1u8; 40]).expect("write back");
        client.read_exact(&mut buf[..40]).expect("read back");
        let mut source =
            SockDiagSource::start(SockDiagSettings { max_sockets: 100_000 }, Arc::new(SystemClock))
                .expect("start");
        assert!(source.poll(false).expect("cheap poll").live.is_none());
        let live = source.poll(true).expect("scan").live.expect("live");
        let port = client.local_addr().expect("addr").port();
        let c = live.iter().find(|o| o.record.local.port == port).expect("client flow").record.clone();
        assert_eq!((c.bytes_sent, c.bytes_received, c.direction), (3_000, 40, Direction::Outgoing));
        let s = live
            .iter()
            .find(|o| o.record.remote.port == port && o.record.local.port == server_addr.port())
            .expect("server flow");
        assert_eq!((s.record.bytes_sent, s.record.bytes_received), (40, 3_000));
        assert_eq!(s.record.direction, Direction::Incoming);
        let cookie = c.cookie;
        drop((client, server));
        std::thread::sleep(std::time::Duration::from_millis(50));
        let batch = source.poll(true).expect("scan");
        let closed = batch.closed.iter().find(|o| o.record.cookie == cookie).expect("closed client flow");
        assert_eq!((closed.record.bytes_sent, closed.record.bytes_received), (3_000, 40));
        let st = source.status();
        assert_eq!(st.hooks[0].chosen.as_deref(), Some(TCP_HOOK));
        assert!(st.counters["sockets_seen"] >= 3);
    }

    /// IPv6 sockets come from the second dump (skipped where ::1 is not configured).
    #[test]
    fn dumps_ipv6_connections() {
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            eprintln!("SKIP dumps_ipv6_connections: no ::1 here");
            return;
        };
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        client.write_all(&[1u8; 123]).expect("write");
        let mut buf = [0u8; 123];
        server.read_exact(&mut buf).expect("read");
        let mut source =
            SockDiagSource::start(SockDiagSettings { max_sockets: 100_000 }, Arc::new(SystemClock))
                .expect("start");
        let live = source.poll(true).expect("scan").live.expect("live");
        let port = client.local_addr().expect("addr").port();
        let c = live.iter().find(|o| o.record.local.port == port).expect("client flow");
        assert_eq!((c.record.family, c.record.bytes_sent), (crate::flow::Family::Ipv6, 123));
        assert_eq!(c.record.local.addr, std::net::Ipv6Addr::LOCALHOST);
    }
}
