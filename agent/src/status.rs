//! The `/status` document: one typed snapshot of the agent's state, read by the API (as JSON)
//! and by `/metrics` (field by field), so neither reads the other.

use std::collections::BTreeMap;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::aggregate::AggregateStats;
use crate::collector::{HookStatus, MapStatus};
use crate::enrich::ProviderHealth;
use crate::otlp::OtlpCounts;
use crate::preflight::KernelInfo;
use crate::state::{Enrichers, Shared};
use crate::table::TableStats;
use crate::tags::Tags;

/// The `/status` document.
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub collector: &'static str,
    /// Why `collector = auto` did not run eBPF (absent when it did, or when configured).
    pub collector_reason: Option<String>,
    /// What the running collector cannot see (absent for eBPF: see the hooks).
    pub collector_limits: Option<&'static str>,
    pub ready: bool,
    pub collecting: bool,
    /// What `/healthz` answers, with the last poll's age and the stall threshold.
    pub liveness: crate::liveness::Health,
    pub uptime_seconds: f64,
    pub last_scan_age_seconds: Option<f64>,
    pub kernel: KernelInfo,
    pub hooks: Vec<HookStatus>,
    pub maps: Vec<MapStatus>,
    /// The agent's resident memory and the kernel memory of its eBPF maps.
    pub memory: Memory,
    /// Calls and kernel run time of each loaded eBPF program.
    pub programs: Programs,
    pub drops: BTreeMap<&'static str, u64>,
    pub counters: BTreeMap<&'static str, u64>,
    pub flows: TableStats,
    /// Closed flows waiting for their peer's labels, and what the labeller's bounds cost.
    pub labels: crate::state::LabelCounts,
    pub aggregation: AggregateStats,
    /// OTLP exporter counters (absent when OTLP is off).
    pub otlp: Option<OtlpCounts>,
    /// ECS provider freshness and errors (absent when no ECS environment is detected).
    pub ecs: Option<ProviderHealth>,
    /// ECS API provider (remote ends) freshness and errors (absent when off).
    pub ecs_api: Option<ProviderHealth>,
    /// Enhanced resolution (AWS context of remote ends): decision, identity, resolver counters.
    pub aws: Option<ProviderHealth>,
    /// Static tags carried by every record.
    pub tags: Tags,
    /// FIPS mode (absent when off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fips: Option<crate::fips::FipsStatus>,
    /// DNS monitoring counters (absent when off).
    pub dns: Option<crate::dns::DnsCounters>,
    /// NAT attribution through conntrack (absent when off).
    pub conntrack: Option<ProviderHealth>,
    /// Capabilities kept after start-up (name, what for), those dropped, `no_new_privs`.
    pub privileges: Option<crate::privileges::PrivilegeStatus>,
    /// API connections: active, cap, accepted, refused, timeouts, foreign `Host`.
    pub api: crate::state::ApiCounts,
    /// The map's history of series deltas (buckets, rows, folded, trimmed).
    pub map: crate::map::history::HistoryStats,
    /// `cgroup_scope` (absent when unset): the directory, its cgroups, what it left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_scope: Option<crate::pipeline::scope::ScopeStatus>,
}

impl Status {
    pub fn of(shared: &Shared) -> Status {
        let (c, e) = (&shared.collector, &shared.enrichers);
        let source = c.source.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let flows = shared.table().stats();
        let mut drops = source.drops;
        drops.insert("output_dropped_records", shared.export.output_dropped.load(Ordering::Relaxed));
        drops.insert("output_write_errors", shared.export.output_errors.load(Ordering::Relaxed));
        drops.insert("poll_errors", c.poll_errors.load(Ordering::Relaxed));
        drops.insert("export_overflow", flows.export_overflow);
        let labels = *c.labels.lock().unwrap_or_else(PoisonError::into_inner);
        drops.insert("labels_not_held_full", labels.not_held_full);
        drops.insert("peer_labels_evicted", labels.peer_labels_evicted);
        let mut counters = source.counters;
        if let Some(o) = &shared.export.otlp {
            let c = o.counts();
            drops.insert("otlp_batches_dropped", c.batches_dropped);
            drops.insert("otlp_batches_rejected", c.batches_rejected);
            counters.insert("otlp_batches_sent", c.batches_sent);
            counters.insert("otlp_attempts_failed", c.attempts_failed);
        }
        let api = shared.api.counts();
        drops.insert("api_connections_refused", api.connections_refused);
        drops.insert("api_header_timeouts", api.header_timeouts);
        drops.insert("api_request_timeouts", api.request_timeouts);
        drops.insert("api_host_rejected", api.host_rejected);
        counters.insert("api_connections_accepted", api.connections_accepted);
        let last_scan = *c.last_scan.lock().unwrap_or_else(PoisonError::into_inner);
        let map = shared.export.map.lock().unwrap_or_else(PoisonError::into_inner).stats();
        drops.insert("map_rows_folded", map.folded);
        drops.insert("map_buckets_trimmed", map.trimmed);
        Status {
            version: env!("CARGO_PKG_VERSION"),
            collector: c.kind.name(),
            collector_reason: c.reason.clone(),
            collector_limits: c.limits,
            ready: c.ready.load(Ordering::SeqCst),
            collecting: c.collecting.load(Ordering::SeqCst),
            liveness: c.heartbeat.health(c.collecting.load(Ordering::SeqCst)),
            uptime_seconds: c.started.elapsed().as_secs_f64(),
            last_scan_age_seconds: last_scan.map(|t| t.elapsed().as_secs_f64()),
            kernel: c.kernel.clone(),
            hooks: source.hooks,
            maps: source.maps,
            memory: Memory::now(source.kernel_memory),
            programs: Programs::now(source.programs),
            drops,
            counters,
            flows,
            labels,
            aggregation: shared.export.series.lock().unwrap_or_else(PoisonError::into_inner).1,
            otlp: shared.export.otlp.as_ref().map(|o| o.counts()),
            ecs: Enrichers::health(&e.local),
            ecs_api: Enrichers::health(&e.ecs_api),
            aws: Enrichers::health(&e.aws),
            tags: shared.export.tags.clone(),
            fips: shared.export.fips.clone(),
            dns: shared
                .export
                .dns
                .as_ref()
                .map(|d| d.lock().unwrap_or_else(PoisonError::into_inner).counters()),
            conntrack: Enrichers::health(&e.conntrack),
            privileges: c.privileges.clone(),
            api,
            map,
            cgroup_scope: c.scope.as_ref().map(crate::pipeline::scope::ScopeShared::status),
        }
    }
}

/// `/status` → `memory`.
#[derive(Clone, Debug, Serialize)]
pub struct Memory {
    /// Resident set (`VmRSS`) and its peak (`VmHWM`) of the agent process, in bytes.
    pub rss_bytes: Option<u64>,
    pub rss_peak_bytes: Option<u64>,
    /// Kernel memory of all eBPF maps (`memlock`; charged to the memory cgroup on 5.11+,
    /// not part of the resident set except ring buffer pages the agent has read).
    pub kernel_maps_bytes: u64,
    pub kernel_maps: BTreeMap<String, u64>,
}

impl Memory {
    fn now(kernel_maps: BTreeMap<String, u64>) -> Memory {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        Memory {
            rss_bytes: proc_status_kib(&status, "VmRSS:").map(|k| k * 1024),
            rss_peak_bytes: proc_status_kib(&status, "VmHWM:").map(|k| k * 1024),
            kernel_maps_bytes: kernel_maps.values().sum(),
            kernel_maps,
        }
    }
}

/// What the kernel counted for the agent's eBPF programs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Programs {
    /// `kernel.bpf_stats_enabled`: the kernel counts calls and run time only while it is 1
    /// (`sysctl -w kernel.bpf_stats_enabled=1`; the counting costs two clock reads per call).
    pub stats_enabled: Option<bool>,
    /// By program name (as in the object file): calls and nanoseconds in the program.
    pub by_program: BTreeMap<String, crate::collector::ProgramRuns>,
}

impl Programs {
    fn now(by_program: BTreeMap<String, crate::collector::ProgramRuns>) -> Programs {
        let stats = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").ok();
        Programs { stats_enabled: stats.map(|v| v.trim() != "0"), by_program }
    }
}

/// A `kB` line of `/proc/<pid>/status`.
fn proc_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix(key))?.trim().trim_end_matches("kB").trim().parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_kib_lines_of_proc_status() {
        let s = "Name:\teddy-agent\nVmHWM:\t   30720 kB\nVmRSS:\t   20480 kB\n";
        assert_eq!(super::proc_status_kib(s, "VmRSS:"), Some(20480));
        assert_eq!(super::proc_status_kib(s, "VmHWM:"), Some(30720));
        assert_eq!(super::proc_status_kib(s, "VmSwap:"), None);
    }
}
