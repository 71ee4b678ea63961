//! Collectors: where flows come from.
//!
//! [`FlowSource`] is the seam: [`ebpf::EbpfSource`] reads Eddy's kernel programs;
//! [`sock_diag::SockDiagSource`] polls the socket table over netlink (no privileges);
//! [`fake::FakeSource`] replays scripted batches in tests. A source hands out
//! [`Batch`]es of domain records; raw kernel types never leave the collector.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::flow::FlowRecord;

pub mod ebpf;
#[cfg(test)]
pub mod fake;
pub mod sock_diag;

/// A record with the kernel's monotonic time of its last update.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub record: FlowRecord,
    /// CLOCK_MONOTONIC ns of the last packet/byte/state event.
    pub last_ns: u64,
}

/// What one poll returns.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Flows that ended since the previous poll (final counters).
    pub closed: Vec<Observed>,
    /// Every open flow, when the poll scanned them (`None`: closed flows only).
    pub live: Option<Vec<Observed>>,
}

/// Which collector turns kernel state into flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectorKind {
    Ebpf,
    SockDiag,
    /// The test fake.
    Fake,
}

impl CollectorKind {
    pub fn name(self) -> &'static str {
        match self {
            CollectorKind::Ebpf => "ebpf",
            CollectorKind::SockDiag => "sock_diag",
            CollectorKind::Fake => "fake",
        }
    }
}

/// A source of flows.
pub trait FlowSource: Send {
    /// Collector kind for `/status`.
    fn kind(&self) -> CollectorKind;
    /// Drains flows closed since the last call; with `scan_live`, also reads every
    /// open flow, evicts idle ones and refreshes map fill and drop counters.
    fn poll(&mut self, scan_live: bool) -> Result<Batch, CollectorError>;
    /// Hooks, maps and drop counters as of the last poll.
    fn status(&self) -> SourceStatus;
    /// DNS packets copied by the kernel since the last call (sources without DNS capture: none).
    fn take_dns(&mut self) -> Vec<crate::dns::DnsPacket> {
        Vec::new()
    }
}

/// Why a collector could not start or read.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("loading the eBPF object failed: {0}")]
    Load(String),
    #[error(
        "no usable hook for {capability}: {reasons}\n\nEddy needs BTF-enabled tracepoints \
         (tp_btf) for the TCP connection lifecycle (kernel 5.5 or later with CONFIG_DEBUG_INFO_BTF). \
         If the verifier rejected a program, the message above has its log; please report it \
         with the output of `uname -r`."
    )]
    NoHook { capability: &'static str, reasons: String },
    #[error("cannot open cgroup v2 directory {path}: {source}")]
    Cgroup { path: String, source: std::io::Error },
    #[error("reading kernel map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error(transparent)]
    SockDiag(sock_diag::SockDiagError),
}

/// A hook candidate that was not used, and why.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Rejected {
    pub hook: String,
    pub reason: String,
}

/// The hook chosen for one capability.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HookStatus {
    pub capability: &'static str,
    /// `None`: the capability is unavailable (see `rejected`).
    pub chosen: Option<String>,
    /// Better candidates that failed, and candidates not needed.
    pub rejected: Vec<Rejected>,
}

/// Fill of one bounded resource.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MapStatus {
    pub name: &'static str,
    pub capacity: u64,
    /// `None` where the fill cannot be read (the ring buffer, drained every 20 ms).
    pub entries: Option<u64>,
}

/// What the kernel counted for one eBPF program (`bpf_prog_info`).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ProgramRuns {
    pub runs: u64,
    pub run_time_ns: u64,
}

/// The source's view for `/status`.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SourceStatus {
    pub hooks: Vec<HookStatus>,
    pub maps: Vec<MapStatus>,
    /// Kernel memory of each eBPF map in bytes (`memlock`; empty for sock_diag).
    pub kernel_memory: BTreeMap<String, u64>,
    /// Calls and kernel run time of each loaded eBPF program, by program name (empty for
    /// sock_diag). The kernel counts them only while `kernel.bpf_stats_enabled` is 1.
    pub programs: BTreeMap<String, ProgramRuns>,
    /// Everything that was not counted or not delivered, by cause.
    pub drops: BTreeMap<&'static str, u64>,
    /// Throughput counters (connections tracked, records delivered).
    pub counters: BTreeMap<&'static str, u64>,
}
