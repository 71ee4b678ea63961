//! Collector selection (`collector = auto | ebpf | sock_diag`): one decision, logged
//! once, and reported in `/status` with what the chosen collector cannot see.
//!
//! `auto` picks `sock_diag` on Fargate (no eBPF there); elsewhere it tries the eBPF
//! preflight and load and, when either fails, logs one WARN line with the reason and
//! falls back to `sock_diag`. `ebpf` keeps the strict behaviour: the failure is the
//! startup error (a paragraph saying what is missing) and the agent exits 1.

use std::sync::Arc;

use super::CommandError;
use crate::clock::{Clock, SystemClock};
use crate::collector::FlowSource;
use crate::collector::ebpf::{EbpfSettings, EbpfSource};
use crate::collector::sock_diag::{self, SockDiagSettings, SockDiagSource};
use crate::config::{CollectorChoice, Config};
use crate::ecs::environment::Environment;
use crate::preflight::{self, KernelInfo};

/// What `/status` says sock_diag mode cannot see, when it may enter other network
/// namespaces (root / CAP_SYS_ADMIN): it dumps every one with a process in it.
pub const SOCK_DIAG_LIMITS: &str = "sock_diag polls the socket table: it misses connections that open and \
     close between two polls and bytes sent after the last poll of a connection; no UDP, no process \
     (pid/comm), no failure reasons; it dumps every network namespace with a process in /proc (up to 1024 \
     per scan, more are counted in drops), not namespaces no process is in";

/// What `/status` says sock_diag mode cannot see without the privilege to enter other
/// network namespaces (Fargate, unprivileged): only the agent's own is dumped.
pub const SOCK_DIAG_LIMITS_OWN_NAMESPACE: &str = "sock_diag polls the socket table: it misses connections \
     that open and close between two polls and bytes sent after the last poll of a connection; no UDP, no \
     process (pid/comm), no failure reasons; only the agent's network namespace (entering the others needs \
     CAP_SYS_ADMIN and the host's pid namespace)";

/// The collector that runs, and why.
pub struct Selected {
    pub source: Box<dyn FlowSource>,
    pub kernel: KernelInfo,
    pub clock: Arc<dyn Clock>,
    /// Why `auto` did not run eBPF (`None`: it did, or the collector was configured).
    pub reason: Option<String>,
    /// What the collector cannot see (`None`: see the README's hook matrix).
    pub limits: Option<&'static str>,
}

/// Starts the configured collector (see the module docs).
pub fn start_source(cfg: &Config, env: &Environment) -> Result<Selected, CommandError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    match cfg.collector {
        CollectorChoice::Ebpf => start_ebpf(cfg, clock),
        CollectorChoice::SockDiag => start_sock_diag(cfg, clock, None),
        CollectorChoice::Auto => {
            if let Environment::Fargate { .. } = env {
                tracing::info!("Fargate detected: using the sock_diag collector (no eBPF on Fargate)");
                let reason = "Fargate detected (AWS_EXECUTION_ENV=AWS_ECS_FARGATE): eBPF is not available";
                return start_sock_diag(cfg, clock, Some(reason.to_string()));
            }
            match start_ebpf(cfg, clock.clone()) {
                Ok(s) => Ok(s),
                Err(e) => {
                    let reason = one_line(&e.to_string());
                    tracing::warn!(
                        "eBPF collector unavailable, falling back to sock_diag (set collector = \"ebpf\" to \
                         make this an error): {reason}"
                    );
                    start_sock_diag(cfg, clock, Some(format!("eBPF collector unavailable: {reason}")))
                }
            }
        }
    }
}

fn start_ebpf(cfg: &Config, clock: Arc<dyn Clock>) -> Result<Selected, CommandError> {
    let kernel = preflight::check(cfg.udp.enabled, cfg.cgroup_path.as_deref())?;
    let settings = EbpfSettings {
        flow_map_entries: cfg.flow_map_entries,
        udp_map_entries: cfg.udp.map_entries,
        ring_buffer_bytes: cfg.ring_buffer_bytes,
        udp_idle_timeout: cfg.udp.idle_timeout,
        udp: cfg.udp.enabled,
        dns: cfg.dns.enabled,
        dns_tcp: cfg.dns.tcp,
        cgroup_path: kernel.cgroup2.clone(),
        disabled_hooks: cfg.disabled_hooks.clone(),
    };
    let source = EbpfSource::start(settings, clock.clone())?;
    Ok(Selected { source: Box::new(source), kernel, clock, reason: None, limits: None })
}

fn start_sock_diag(
    cfg: &Config,
    clock: Arc<dyn Clock>,
    reason: Option<String>,
) -> Result<Selected, CommandError> {
    let kernel = preflight::kernel_info(cfg.cgroup_path.as_deref());
    let source =
        SockDiagSource::start(SockDiagSettings { max_sockets: cfg.flow_map_entries }, clock.clone())?;
    let limits = if source.sees_all_namespaces() { SOCK_DIAG_LIMITS } else { SOCK_DIAG_LIMITS_OWN_NAMESPACE };
    tracing::info!(limits, "collector: {}", sock_diag::TCP_HOOK);
    Ok(Selected { source: Box::new(source), kernel, clock, reason, limits: Some(limits) })
}

/// A multi-line error paragraph as one log line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
