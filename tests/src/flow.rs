//! The flow record as the agent prints it (capture JSON lines, `/flows`), and helpers to find and check records.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

/// One side of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

impl Endpoint {
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.addr, self.port)
    }
}

/// A flow record. Unknown fields are ignored; optional ones default to `None`/0 when absent.
#[derive(Debug, Clone, Deserialize)]
pub struct FlowRecord {
    /// "tcp" | "udp"
    pub protocol: String,
    /// "ipv4" | "ipv6"
    pub family: String,
    /// "outgoing" | "incoming" | "unknown"
    pub direction: String,
    pub local: Endpoint,
    pub remote: Endpoint,
    #[serde(default)]
    pub netns: Option<u64>,
    #[serde(default)]
    pub cgroup_id: Option<u64>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub comm: Option<String>,
    #[serde(default)]
    pub cookie: Option<u64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    #[serde(default)]
    pub retransmits: Option<u64>,
    #[serde(default)]
    pub rtt_us: Option<u64>,
    #[serde(default)]
    pub rtt_var_us: Option<u64>,
    #[serde(default)]
    pub failure: Option<String>,
    #[serde(default)]
    pub opened_at: Option<String>,
    #[serde(default)]
    pub closed_at: Option<String>,
}

impl FlowRecord {
    /// Whether this record is the flow `local` → `remote` of `protocol`.
    pub fn is(&self, protocol: &str, local: SocketAddr, remote: SocketAddr) -> bool {
        self.protocol == protocol && self.local.socket_addr() == local && self.remote.socket_addr() == remote
    }

    /// Whether either endpoint of this record is one of `addrs` (for diagnostics).
    pub fn touches(&self, addrs: &[SocketAddr]) -> bool {
        addrs.contains(&self.local.socket_addr()) || addrs.contains(&self.remote.socket_addr())
    }

    /// One-line summary.
    pub fn summary(&self) -> String {
        format!(
            "{} {} {} {} -> {} sent={}B/{}p recv={}B/{}p retrans={:?} rtt={:?} failure={:?} netns={:?} pid={:?} comm={:?} cookie={:?} opened={:?} closed={:?}",
            self.protocol,
            self.family,
            self.direction,
            self.local.socket_addr(),
            self.remote.socket_addr(),
            self.bytes_sent,
            self.packets_sent,
            self.bytes_received,
            self.packets_received,
            self.retransmits,
            self.rtt_us,
            self.failure,
            self.netns,
            self.pid,
            self.comm,
            self.cookie,
            self.opened_at,
            self.closed_at,
        )
    }
}

/// Records of `protocol` from `local` to `remote`.
pub fn find_records<'a>(
    records: &'a [FlowRecord],
    protocol: &str,
    local: SocketAddr,
    remote: SocketAddr,
) -> Vec<&'a FlowRecord> {
    records.iter().filter(|r| r.is(protocol, local, remote)).collect()
}

/// Summaries of the records touching any of `addrs` (all records if `addrs` is empty), at most 50 lines.
pub fn describe_records(records: &[FlowRecord], addrs: &[SocketAddr]) -> String {
    let mut out = String::new();
    let matching: Vec<&FlowRecord> =
        records.iter().filter(|r| addrs.is_empty() || r.touches(addrs)).collect();
    for r in matching.iter().take(50) {
        let _ = writeln!(out, "  {}", r.summary());
    }
    if matching.len() > 50 {
        let _ = writeln!(out, "  ... and {} more", matching.len() - 50);
    }
    if matching.is_empty() {
        let _ = writeln!(out, "  (no record touches {addrs:?}; {} records in total)", records.len());
    }
    out
}

/// The single record of `protocol` from `local` to `remote`; panics with nearby records when there is not
/// exactly one.
pub fn expect_one<'a>(
    records: &'a [FlowRecord],
    protocol: &str,
    local: SocketAddr,
    remote: SocketAddr,
) -> &'a FlowRecord {
    let found = find_records(records, protocol, local, remote);
    match found.as_slice() {
        [one] => one,
        _ => panic!(
            "expected exactly one {protocol} record {local} -> {remote}, found {}; records touching these endpoints:\n{}",
            found.len(),
            describe_records(records, &[local, remote])
        ),
    }
}

/// Collects assertion failures so one run reports all of them.
#[derive(Debug, Default)]
pub struct Checker {
    errors: Vec<String>,
}

impl Checker {
    pub fn new() -> Checker {
        Checker::default()
    }

    /// Records a failure when `actual != expected`.
    pub fn eq<T: PartialEq + std::fmt::Debug>(&mut self, ctx: &str, field: &str, actual: T, expected: T) {
        if actual != expected {
            self.errors.push(format!("{ctx}: {field} = {actual:?}, expected {expected:?}"));
        }
    }

    /// Records `msg` when `cond` is false.
    pub fn check(&mut self, cond: bool, ctx: &str, msg: impl std::fmt::Display) {
        if !cond {
            self.errors.push(format!("{ctx}: {msg}"));
        }
    }

    /// Records a failure message.
    pub fn fail(&mut self, msg: impl Into<String>) {
        self.errors.push(msg.into());
    }

    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// Panics listing every failure (and `context`, e.g. the relevant records) if there was any.
    pub fn finish(self, context: &str) {
        if self.errors.is_empty() {
            return;
        }
        let shown: Vec<&String> = self.errors.iter().take(60).collect();
        let mut msg = format!("{} assertion(s) failed:\n", self.errors.len());
        for e in shown {
            let _ = writeln!(msg, "  - {e}");
        }
        if self.errors.len() > 60 {
            let _ = writeln!(msg, "  ... and {} more", self.errors.len() - 60);
        }
        panic!("{msg}{context}");
    }
}
