//! The `sock_diag` collector: polls the kernel's socket table over netlink
//! (`NETLINK_SOCK_DIAG`, INET_DIAG dumps with `tcp_info`) instead of loading eBPF
//! programs. It needs no privileges, so it runs on Fargate and wherever eBPF cannot
//! load (no CAP_BPF, no BTF).
//!
//! How: every `poll(scan_live = true)` dumps all TCP sockets (IPv4 and IPv6) of each
//! network namespace it covers ([`netlink`]), over one netlink socket per namespace kept
//! open between scans; [`track`] keys them by namespace and socket cookie, decides the
//! direction from the namespace's listening sockets (a connection on a listening port is
//! incoming), converts `tcp_info` with the eBPF collector's semantics (payload bytes
//! without SYN/FIN: `bytes_sent - bytes_retrans` and `bytes_received` less a received
//! FIN; packets = segments; retransmits = `total_retrans`; smoothed RTT) and reports
//! sockets that vanished since the previous dump as closed, with their last-seen
//! counters. Every record carries its namespace's inode (`netns`). Polls between scans
//! return an empty batch at once.
//!
//! Which namespaces: when the agent may enter network namespaces (`CAP_SYS_ADMIN`, found
//! by trying: [`enter::probe`]), every scan walks `/proc/<pid>/ns/net` ([`namespaces`];
//! with the host's pid namespace that is every task on the host: awsvpc tasks, docker's
//! bridge, the host), opens a socket inside each new namespace on a dedicated thread
//! ([`enter`]), and closes the sockets of namespaces that no process is in any more after
//! one last dump (their open flows are reported closed). Otherwise (Fargate, any
//! unprivileged agent) only the agent's own namespace is dumped, as `/status` says.
//!
//! Limits (also in `/status`): connections that open and close between two polls are
//! missed, unless the application still holds the closed socket at the next poll;
//! bytes that flow after the last poll of a connection are missed; `opened_at` is the
//! time of the poll that first saw the connection (null in the first dump of a
//! namespace); pid, process name and failure reasons are unknown; UDP is not seen
//! (sock_diag has no UDP byte or packet counters). At most [`MAX_NAMESPACES`] namespaces
//! (more are counted as drops); a namespace no process is in is not seen. Needs Linux
//! 5.4+ (the `tcp_info` layout the parser expects); a dump with messages that do not
//! decode, beyond the dump limit, or that failed, closes nothing in its namespace
//! (sockets missing from it may still exist).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use netlink_sys::Socket;

use super::{Batch, CollectorError, FlowSource, HookStatus, MapStatus, Observed, Rejected, SourceStatus};
use crate::clock::Clock;

pub mod cookies;
pub mod enter;
pub mod namespaces;
pub mod netlink;
pub mod sockstat;
pub mod track;

/// What `/status` shows as the chosen TCP hook.
pub const TCP_HOOK: &str = "netlink sock_diag (INET_DIAG, tcp_info)";
/// What the collector cannot see.
pub const TCP_LIMITS: &str =
    "misses connections that open and close between two polls; bytes after the last poll";
const UDP_NOT_SEEN: &str =
    "UDP is not seen in sock_diag mode: sock_diag reports no UDP byte or packet counters";
/// Network namespaces dumped per scan, at most.
pub const MAX_NAMESPACES: usize = 1024;
/// `/status` → the `namespaces` capability, when every namespace is dumped.
pub const ALL_NAMESPACES: &str =
    "every network namespace with a process in /proc (setns, one netlink socket each)";
/// `/status` → the `namespaces` capability, when only the agent's is.
pub const OWN_NAMESPACE: &str = "the agent's own network namespace only";
/// Namespaces whose failure `/status` details, at most.
const FAILURES_SHOWN: usize = 8;
/// `PROC_PID_INIT_INO` (include/linux/proc_ns.h): the inode of the initial pid namespace.
const HOST_PID_NS_INODE: u64 = 0xEFFF_FFFC;

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

/// The netlink socket of one namespace, and a process in it (`None`: the agent).
#[derive(Debug)]
struct NsSocket {
    socket: Socket,
    pid: Option<u32>,
}

/// Which namespaces are dumped.
#[derive(Debug)]
enum Scope {
    /// Only the agent's; why not the others (the probe's error).
    Own { why: String },
    /// Every namespace found in `/proc`; whether that `/proc` is the host's pid namespace.
    All { host_pid: bool },
}

/// Polls the socket tables of the network namespaces it covers.
pub struct SockDiagSource {
    tracker: track::Tracker,
    clock: Arc<dyn Clock>,
    max_sockets: u32,
    scope: Scope,
    proc_root: PathBuf,
    /// The agent's network namespace (`None`: unknown; then only it is dumped).
    own_netns: Option<u32>,
    /// One netlink socket per namespace, bound to it.
    sockets: HashMap<Option<u32>, NsSocket>,
    /// Namespaces found but not opened, with the reason (for `/status`; retried every scan).
    failing: BTreeMap<u32, String>,
    seq: u32,
    sockets_seen: u64,
    scans: u64,
    netlink_errors: u64,
    undecodable: u64,
    over_capacity: u64,
    dump_limit_hits: u64,
    closed_total: u64,
    namespaces_last_scan: u64,
    namespaces_opened: u64,
    namespaces_closed: u64,
    scan_micros: u64,
    /// Family dumps not needed (no TCP socket of that family in the namespace).
    dumps_skipped: u64,
    /// Namespace drops by cause (stable keys: see [`namespace_drop_kinds`]).
    ns_drops: BTreeMap<&'static str, u64>,
}

/// Every namespace drop cause, present in `/status` even when zero.
fn namespace_drop_kinds() -> impl Iterator<Item = &'static str> {
    enter::EnterError::KINDS.into_iter().chain([
        "namespaces_over_limit",
        "namespace_dump_failed",
        "namespace_links_unreadable",
        "proc_walk_failed",
        "proc_walk_truncated",
    ])
}

impl SockDiagSource {
    /// Opens a socket in the agent's namespace and checks that one dump works (so a
    /// kernel without sock_diag fails at startup, not at the first poll); then tries
    /// whether other namespaces can be entered.
    pub fn start(settings: SockDiagSettings, clock: Arc<dyn Clock>) -> Result<Self, CollectorError> {
        let own_socket = netlink::open()?;
        netlink::dump_tcp(&own_socket, 1, false, &mut netlink::Dump::default(), 1)?;
        let own_netns = std::fs::metadata("/proc/self/ns/net").ok().and_then(|m| u32::try_from(m.ino()).ok());
        let scope = match (own_netns, enter::probe()) {
            (Some(_), Ok(())) => {
                let host_pid =
                    std::fs::metadata("/proc/self/ns/pid").map(|m| m.ino()).ok() == Some(HOST_PID_NS_INODE);
                tracing::info!(host_pid, "sock_diag: dumping every network namespace found in /proc");
                Scope::All { host_pid }
            }
            (None, _) => Scope::Own { why: "the agent's own network namespace has no readable inode".into() },
            (Some(_), Err(e)) => {
                let why = format!("cannot enter network namespaces ({e}): needs CAP_SYS_ADMIN");
                tracing::info!(reason = %why, "sock_diag: dumping the agent's own network namespace only");
                Scope::Own { why }
            }
        };
        Ok(SockDiagSource {
            tracker: track::Tracker::new(settings.max_sockets as usize),
            clock,
            max_sockets: settings.max_sockets,
            scope,
            proc_root: PathBuf::from("/proc"),
            own_netns,
            sockets: HashMap::from([(own_netns, NsSocket { socket: own_socket, pid: None })]),
            failing: BTreeMap::new(),
            seq: 1,
            sockets_seen: 0,
            scans: 0,
            netlink_errors: 0,
            undecodable: 0,
            over_capacity: 0,
            dump_limit_hits: 0,
            closed_total: 0,
            namespaces_last_scan: 0,
            namespaces_opened: 0,
            namespaces_closed: 0,
            scan_micros: 0,
            dumps_skipped: 0,
            ns_drops: namespace_drop_kinds().map(|k| (k, 0)).collect(),
        })
    }

    /// Whether every network namespace is dumped (else only the agent's).
    pub fn sees_all_namespaces(&self) -> bool {
        matches!(self.scope, Scope::All { .. })
    }

    fn count(&mut self, kind: &'static str, n: u64) {
        *self.ns_drops.entry(kind).or_default() += n;
    }

    /// Samples of both families of one namespace, at most `limit` (listeners and TIME_WAIT included).
    fn dump(&mut self, netns: Option<u32>, limit: usize) -> Result<netlink::Dump, SockDiagError> {
        self.dump_families(netns, limit, (true, true))
    }

    /// Samples of the families `(ipv4, ipv6)` of one namespace, at most `limit`.
    fn dump_families(
        &mut self,
        netns: Option<u32>,
        limit: usize,
        (ipv4, ipv6): (bool, bool),
    ) -> Result<netlink::Dump, SockDiagError> {
        let Some(NsSocket { socket, .. }) = self.sockets.get(&netns) else {
            return Err(SockDiagError::Io { op: "dump", source: std::io::Error::other("no socket") });
        };
        self.seq = self.seq.wrapping_add(2);
        let (seq, mut dump) = (self.seq, netlink::Dump::default());
        let v4 = if ipv4 { netlink::dump_tcp(socket, seq, false, &mut dump, limit) } else { Ok(()) };
        let v6 = match v4 {
            Ok(()) if ipv6 => netlink::dump_tcp(socket, seq.wrapping_add(1), true, &mut dump, limit),
            other => other,
        };
        self.undecodable += dump.undecodable;
        self.dump_limit_hits += dump.over_limit;
        v6.map(|()| dump)
    }

    /// Walks `/proc`: closes the sockets of namespaces no process is in any more (after a
    /// last dump), opens sockets in new ones. Closed flows go to `closed`.
    fn sync_namespaces(&mut self, now: u64, closed: &mut Vec<Observed>) {
        let keep: HashSet<u32> = self.sockets.keys().flatten().copied().collect();
        let d = match namespaces::discover(&self.proc_root, MAX_NAMESPACES, &keep) {
            Ok(d) => d,
            Err(e) => {
                // Nothing is known to have vanished: dump what is open.
                if self.ns_drops.get("proc_walk_failed") == Some(&0) {
                    tracing::warn!(error = %e, "sock_diag: cannot walk /proc for network namespaces");
                }
                self.count("proc_walk_failed", 1);
                return;
            }
        };
        self.count("namespaces_over_limit", d.over_limit);
        self.count("namespace_links_unreadable", d.unreadable);
        self.count("proc_walk_truncated", u64::from(d.truncated));
        let own = self.own_netns;
        let present = |ns: &Option<u32>| *ns == own || ns.is_some_and(|i| d.found.contains_key(&i));
        let vanished: Vec<Option<u32>> = self.sockets.keys().filter(|ns| !present(ns)).copied().collect();
        for ns in vanished {
            // One last dump (its flows are then forgotten below, as closed): sockets closed since the
            // previous scan still have their final counters.
            if let Ok(dump) = self.dump(ns, (self.max_sockets as usize).saturating_mul(4)) {
                let complete = dump.undecodable == 0 && dump.over_limit == 0;
                closed
                    .extend(self.tracker.scan(ns, &dump.samples, complete, now, self.clock.as_ref()).closed);
            }
            self.sockets.remove(&ns);
            self.namespaces_closed += 1;
        }
        let forgotten: Vec<Option<u32>> =
            self.tracker.namespaces().into_iter().filter(|ns| !present(ns)).collect();
        for ns in forgotten {
            closed.extend(self.tracker.forget(ns, now, self.clock.as_ref()));
        }
        for (ns, s) in self.sockets.iter_mut() {
            // A process in the namespace now (the one seen before may have exited).
            if let Some(pid) = ns.and_then(|i| d.found.get(&i)) {
                s.pid = Some(*pid);
            }
        }
        self.failing.retain(|inode, _| d.found.contains_key(inode));
        let mut targets: Vec<enter::Target> = d
            .found
            .iter()
            .filter(|(inode, _)| !self.sockets.contains_key(&Some(**inode)))
            .map(|(&inode, &pid)| enter::Target { inode, pid })
            .collect();
        if targets.is_empty() {
            return;
        }
        targets.sort_by_key(|t| t.inode);
        for (inode, r) in enter::open_sockets(&self.proc_root, &targets) {
            match r {
                Ok(socket) => {
                    let pid = d.found.get(&inode).copied();
                    self.sockets.insert(Some(inode), NsSocket { socket, pid });
                    self.failing.remove(&inode);
                    self.namespaces_opened += 1;
                }
                Err(e) => {
                    self.count(e.kind(), 1);
                    let reason = e.to_string();
                    if self.failing.insert(inode, reason.clone()).is_none() {
                        tracing::warn!(netns = inode, error = %reason, "sock_diag: cannot dump a network namespace (retried every scan)");
                    }
                }
            }
        }
    }

    /// One scan of every covered namespace.
    fn scan(&mut self) -> Result<Batch, CollectorError> {
        let started = Instant::now();
        let now = self.clock.mono_now_ns();
        let mut closed = Vec::new();
        let mut live = Vec::new();
        if !self.sockets.contains_key(&self.own_netns) {
            // Its socket failed at the previous scan: a new one, in place (no setns).
            self.sockets.insert(self.own_netns, NsSocket { socket: netlink::open()?, pid: None });
        }
        if self.sees_all_namespaces() {
            self.sync_namespaces(now, &mut closed);
        }
        let mut order: Vec<Option<u32>> = self.sockets.keys().copied().collect();
        order.sort();
        let mut budget = (self.max_sockets as usize).saturating_mul(4);
        let (mut dumped, mut last_error) = (0u64, None);
        for ns in order {
            let families = self.families_to_dump(ns);
            if families == (false, false) {
                // No TCP socket and nothing to close: what an empty dump would give, without its cost.
                self.dumps_skipped += 2;
                dumped += 1;
                self.tracker.scan(ns, &[], true, now, self.clock.as_ref());
                continue;
            }
            self.dumps_skipped += u64::from(!families.0) + u64::from(!families.1);
            let dump = match self.dump_families(ns, budget, families) {
                Ok(d) => d,
                Err(e) => {
                    // An incomplete dump would report every missing socket as closed: skip it, and
                    // close the socket (it may hold the rest of the answer); a new one next scan.
                    self.netlink_errors += 1;
                    if ns != self.own_netns || self.sees_all_namespaces() {
                        self.count("namespace_dump_failed", 1);
                    }
                    tracing::debug!(netns = ?ns, error = %e, "sock_diag dump failed");
                    self.sockets.remove(&ns);
                    last_error = Some(e);
                    continue;
                }
            };
            dumped += 1;
            budget = budget.saturating_sub(dump.samples.len());
            self.sockets_seen += dump.samples.len() as u64;
            let complete = dump.undecodable == 0 && dump.over_limit == 0;
            let r = self.tracker.scan(ns, &dump.samples, complete, now, self.clock.as_ref());
            self.over_capacity += r.over_capacity;
            closed.extend(r.closed);
            live.extend(r.live);
        }
        if let (0, Some(e)) = (dumped, last_error) {
            // Nothing could be read (today's behaviour with one namespace): the poll fails.
            self.closed_total += closed.len() as u64;
            return if closed.is_empty() { Err(e.into()) } else { Ok(Batch { closed, live: None }) };
        }
        self.scans += 1;
        self.namespaces_last_scan = dumped;
        self.closed_total += closed.len() as u64;
        self.scan_micros += u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        Ok(Batch { closed, live: Some(live) })
    }

    /// Which families of a namespace need a dump: with every namespace covered, a family
    /// without TCP sockets ([`sockstat`]) and without tracked flows is skipped (a dump walks
    /// the kernel's whole TCP hash, whatever the namespace holds). One namespace only: both.
    fn families_to_dump(&self, ns: Option<u32>) -> (bool, bool) {
        if !self.sees_all_namespaces() {
            return (true, true);
        }
        let pid = self.sockets.get(&ns).and_then(|s| s.pid);
        let n = sockstat::in_use(&self.proc_root, pid);
        let need = |count: Option<u64>, ipv6| count != Some(0) || self.tracker.has_flows(ns, ipv6);
        (need(n.v4, false), need(n.v6, true))
    }

    /// The `namespaces` capability for `/status`: which namespaces, and what is missed.
    fn namespaces_status(&self) -> HookStatus {
        let (chosen, mut rejected) = match &self.scope {
            Scope::Own { why } => {
                (OWN_NAMESPACE, vec![Rejected { hook: ALL_NAMESPACES.into(), reason: why.clone() }])
            }
            Scope::All { host_pid } => {
                let mut r = Vec::new();
                if !host_pid {
                    r.push(Rejected {
                        hook: "the host's pid namespace".into(),
                        reason:
                            "the agent is not in the host's pid namespace: only namespaces of processes it \
                                 can see are dumped (run with pidMode host)"
                                .into(),
                    });
                }
                (ALL_NAMESPACES, r)
            }
        };
        rejected.extend(
            self.failing
                .iter()
                .take(FAILURES_SHOWN)
                .map(|(inode, reason)| Rejected { hook: format!("netns {inode}"), reason: reason.clone() }),
        );
        HookStatus { capability: "namespaces", chosen: Some(chosen.into()), rejected }
    }
}

impl FlowSource for SockDiagSource {
    fn kind(&self) -> super::CollectorKind {
        super::CollectorKind::SockDiag
    }

    fn poll(&mut self, scan_live: bool) -> Result<Batch, CollectorError> {
        if !scan_live {
            return Ok(Batch::default());
        }
        self.scan()
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
            self.namespaces_status(),
        ];
        let mut drops = BTreeMap::from([
            ("sockets_over_capacity", self.over_capacity),
            ("sockets_over_dump_limit", self.dump_limit_hits),
            ("netlink_undecodable_messages", self.undecodable),
        ]);
        drops.extend(self.ns_drops.iter().map(|(k, v)| (*k, *v)));
        let counters = BTreeMap::from([
            ("sockets_seen", self.sockets_seen),
            ("sock_diag_scans", self.scans),
            ("netlink_errors", self.netlink_errors),
            ("tcp_closed", self.closed_total),
            ("namespaces", self.namespaces_last_scan),
            ("namespaces_opened", self.namespaces_opened),
            ("namespaces_closed", self.namespaces_closed),
            ("scan_micros", self.scan_micros),
            ("dumps_skipped", self.dumps_skipped),
        ]);
        let ns_capacity = if self.sees_all_namespaces() { MAX_NAMESPACES as u64 } else { 1 };
        SourceStatus {
            hooks,
            maps: vec![
                MapStatus {
                    name: "sock_diag_sockets",
                    capacity: self.max_sockets.into(),
                    entries: Some(self.tracker.len() as u64),
                },
                MapStatus {
                    name: "sock_diag_namespaces",
                    capacity: ns_capacity,
                    entries: Some(self.sockets.len() as u64),
                },
            ],
            kernel_memory: BTreeMap::new(),
            programs: BTreeMap::new(),
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
