//! What the collection thread shares with the API, in three parts built once at start (plus
//! the API's own connection counters):
//! [`CollectorState`] (what the collector is and how it is doing), [`Enrichers`] (the ordered
//! chain that labels flows) and [`ExportState`] (where records and series go).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::aggregate::{AggregateStats, SeriesSnapshot, TransferSnapshot};
pub use crate::collector::CollectorKind;
use crate::collector::SourceStatus;
use crate::enrich::{Enricher, ProviderHealth};
use crate::liveness::Heartbeat;
use crate::otlp::OtlpStats;
use crate::preflight::KernelInfo;
use crate::table::FlowTable;
use crate::tags::Tags;
use serde::Serialize;

/// What the labeller holds and what its bounds cost, for `/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LabelCounts {
    /// Closed flows waiting for their peer now.
    pub held: u64,
    /// Closed flows sent on without waiting because [`MAX_HELD`] were already held.
    pub not_held_full: u64,
    /// Peer labels forgotten to stay within their bound (oldest first).
    pub peer_labels_evicted: u64,
}

/// Connection counters, for `/status` (`api`, `drops`, `counters`) and `/metrics`.
#[derive(Debug, Default)]
pub struct ApiStats {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub refused: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub request_timeouts: AtomicU64,
    pub host_rejected: AtomicU64,
    pub max_connections: AtomicU64,
}

/// `/status` → `api`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ApiCounts {
    pub connections_active: u64,
    pub max_connections: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub header_timeouts: u64,
    pub request_timeouts: u64,
    pub host_rejected: u64,
}

impl ApiStats {
    pub fn counts(&self) -> ApiCounts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ApiCounts {
            connections_active: g(&self.active),
            max_connections: g(&self.max_connections),
            connections_accepted: g(&self.accepted),
            connections_refused: g(&self.refused),
            header_timeouts: g(&self.header_timeouts),
            request_timeouts: g(&self.request_timeouts),
            host_rejected: g(&self.host_rejected),
        }
    }
}

/// The collector and its health.
#[derive(Debug)]
pub struct CollectorState {
    pub kind: CollectorKind,
    /// Why `collector = auto` chose this collector instead of eBPF (fallback reason).
    pub reason: Option<String>,
    /// What the running collector cannot see.
    pub limits: Option<&'static str>,
    pub kernel: KernelInfo,
    /// Capabilities kept after start-up and `no_new_privs` (see [`crate::privileges`]).
    pub privileges: Option<crate::privileges::PrivilegeStatus>,
    pub started: Instant,
    /// Hooks, maps and drop counters as of the last scan.
    pub source: Mutex<SourceStatus>,
    /// Set after the first complete scan.
    pub ready: AtomicBool,
    /// Cleared when the collection thread ends (normally or by a panic).
    pub collecting: AtomicBool,
    /// Beaten by the collection thread after every completed poll (`/healthz`).
    pub heartbeat: Heartbeat,
    pub poll_errors: AtomicU64,
    pub last_scan: Mutex<Option<Instant>>,
    /// Held flows and peer labels (see [`super::labeller`]), as of the last poll.
    pub labels: Mutex<LabelCounts>,
    /// `cgroup_scope`, when configured: the directory and what it left out.
    pub scope: Option<crate::pipeline::scope::ScopeShared>,
}

impl CollectorState {
    pub fn new(kind: CollectorKind, kernel: KernelInfo, heartbeat: Heartbeat) -> Self {
        CollectorState {
            kind,
            reason: None,
            limits: None,
            kernel,
            privileges: None,
            started: Instant::now(),
            source: Mutex::new(SourceStatus::default()),
            ready: AtomicBool::new(false),
            collecting: AtomicBool::new(true),
            heartbeat,
            poll_errors: AtomicU64::new(0),
            last_scan: Mutex::new(None),
            labels: Mutex::new(LabelCounts::default()),
            scope: None,
        }
    }
}

/// The labelling chain, in the order it runs on every poll: `conntrack` (NAT translations),
/// then `local` (the local end's ECS identity, and through it intra-host peers), then each of
/// `remote` in order (ECS API, then AWS).
#[derive(Debug, Default)]
pub struct Enrichers {
    pub conntrack: Option<Arc<dyn Enricher>>,
    pub local: Option<Arc<dyn Enricher>>,
    /// ECS identity of remote ends through the ECS API (`/status` → `ecs_api`).
    pub ecs_api: Option<Arc<dyn Enricher>>,
    /// AWS context of remote ends (enhanced resolution; `/status` → `aws`).
    pub aws: Option<Arc<dyn Enricher>>,
}

impl Enrichers {
    /// The remote-end enrichers, in order.
    pub fn remote(&self) -> Vec<&dyn Enricher> {
        self.ecs_api.iter().chain(&self.aws).map(|e| e.as_ref()).collect()
    }

    /// Every enricher in chain order (for a last pass over records kept aside).
    pub fn all(&self) -> Vec<&dyn Enricher> {
        self.conntrack
            .iter()
            .chain(&self.local)
            .chain(&self.ecs_api)
            .chain(&self.aws)
            .map(|e| e.as_ref())
            .collect()
    }

    pub fn health(e: &Option<Arc<dyn Enricher>>) -> Option<ProviderHealth> {
        e.as_ref().map(|e| e.health())
    }
}

/// Where records and series go, and what that costs.
#[derive(Debug)]
pub struct ExportState {
    /// Open and recently closed flows (`/flows`, JSON lines).
    pub table: Mutex<FlowTable>,
    /// Aggregated series as of the last interval, for `/metrics`.
    pub series: Mutex<(SeriesSnapshot, AggregateStats)>,
    /// Cross-AZ and NAT gateway transfer per workload pair, as of the last interval.
    pub transfers: Mutex<TransferSnapshot>,
    /// OTLP exporter counters, when OTLP is on.
    pub otlp: Option<Arc<OtlpStats>>,
    pub output_dropped: AtomicU64,
    pub output_errors: AtomicU64,
    /// DNS statistics, when DNS monitoring is on.
    pub dns: Option<Mutex<crate::dns::DnsTracker>>,
    /// Static tags carried by every record.
    pub tags: Tags,
    /// FIPS mode: where exports go and how AWS API calls are made (absent when off).
    pub fips: Option<crate::fips::FipsStatus>,
    /// Series deltas by minute for the map (`/map`, `/api/map`).
    pub map: Mutex<crate::map::History>,
}

impl ExportState {
    pub fn new(table: FlowTable) -> Self {
        ExportState {
            table: Mutex::new(table),
            series: Mutex::new((Arc::new(Vec::new()), AggregateStats::default())),
            transfers: Mutex::new(Arc::new(Vec::new())),
            otlp: None,
            output_dropped: AtomicU64::new(0),
            output_errors: AtomicU64::new(0),
            dns: None,
            tags: Tags::default(),
            fips: None,
            map: Mutex::new(crate::map::History::new(std::time::SystemTime::now(), Default::default())),
        }
    }
}

/// State shared by the collection thread and the API.
#[derive(Debug)]
pub struct Shared {
    pub collector: CollectorState,
    pub enrichers: Enrichers,
    pub export: ExportState,
    /// API connection counters.
    pub api: Arc<ApiStats>,
}

impl Shared {
    pub fn new(collector: CollectorState, enrichers: Enrichers, export: ExportState) -> Self {
        Shared { collector, enrichers, export, api: Arc::default() }
    }

    pub fn table(&self) -> MutexGuard<'_, FlowTable> {
        self.export.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
