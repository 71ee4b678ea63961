//! Which programs [`super::EbpfSource::start`] attaches, capability by capability, and the
//! configuration bits the kernel programs read from `CONFIG` as a result: TCP (lifecycle,
//! retransmits, live counters, bytes) in [`tcp`], UDP and DNS (the shared `cgroup_skb`
//! programs and the sender's process) in [`udp_and_dns`]. Every choice and every rejected
//! candidate ends up in `/status` → `hooks` and one log line each ([`log`]).

use aya::Ebpf;
use aya::maps::Array;
use eddy_ebpf::shared as k;

use super::{EbpfSettings, choice, hooks, take};
use crate::collector::sock_diag::cookies;
use crate::collector::{CollectorError, HookStatus, Rejected};
use crate::config::DnsTcp;

/// The TCP hooks that attached, and what they need.
pub struct Tcp {
    pub lifecycle: HookStatus,
    pub retransmits: HookStatus,
    pub live: HookStatus,
    pub bytes: HookStatus,
    /// Who names a connection's owner where the lifecycle cannot (sockops with counter bytes).
    pub owner: HookStatus,
    /// The socket iterator program to run before every scan.
    pub live_iter: Option<&'static str>,
    /// The start-up sweep that gave older sockets a cookie (probe-read iterator only).
    pub cookie_sweep: Option<cookies::Sweep>,
    pub config_bits: u32,
}

/// The UDP/DNS hooks that attached, and what they need.
pub struct Udp {
    pub udp: HookStatus,
    pub process: HookStatus,
    pub dns: HookStatus,
    pub dns_on: bool,
    /// The sender comes from `udp_sendmsg` hooks through `UDP_OWNERS`.
    pub senders: bool,
    pub config_bits: u32,
}

/// Attaches the TCP programs; fails if no lifecycle hook attaches.
pub fn tcp(
    ebpf: &mut Ebpf,
    targets: &hooks::Targets<'_>,
    settings: &EbpfSettings,
) -> Result<Tcp, CollectorError> {
    let lifecycle = hooks::attach_first(ebpf, targets, "tcp_lifecycle", hooks::TCP_LIFECYCLE, None);
    if lifecycle.chosen.is_none() {
        let reasons = lifecycle
            .rejected
            .iter()
            .map(|r| format!("{}: {}", r.hook, r.reason))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(CollectorError::NoHook { capability: "tcp_lifecycle", reasons });
    }
    let retransmits = hooks::attach_first(ebpf, targets, "tcp_retransmits", hooks::TCP_RETRANSMITS, None);
    let live = hooks::attach_first(ebpf, targets, "tcp_live_counters", hooks::TCP_LIVE, None);
    let (bytes, owner) = tcp_bytes(ebpf, targets, settings, &lifecycle, &live);
    let mut config_bits = 0;
    if matches!(bytes.chosen.as_deref(), Some(c) if c == hooks::TCP_BYTES_COUNTERS || c == hooks::TCP_BYTES_AT_CLOSE)
    {
        config_bits |= k::CFG_BYTES_FROM_TCP_SOCK;
    }
    // kretprobes miss returns when more calls wait at once than they have instances for.
    if bytes.chosen.as_deref().is_some_and(|c| c.starts_with("kprobe/")) {
        config_bits |= k::CFG_COUNTERS_AT_CLOSE;
    }
    let live_iter = choice::program_of(hooks::TCP_LIVE, live.chosen.as_deref());
    // The probe-read iterators key sockets by existing cookies: give one to every older socket.
    let probe_reads = matches!(live_iter, Some(hooks::ITER_PROBE_READS | hooks::ITER_INODE));
    let cookie_sweep = probe_reads.then(|| {
        let sweep = cookies::sweep(std::path::Path::new("/proc"));
        tracing::info!(
            namespaces = sweep.namespaces,
            sockets = sweep.sockets,
            failed = sweep.failed,
            "socket cookies generated for connections opened before the agent"
        );
        sweep
    });
    Ok(Tcp { lifecycle, retransmits, live, bytes, owner, live_iter, cookie_sweep, config_bits })
}

/// `tcp_owner` where the per-call byte hooks name the owner.
const PER_CALL_OWNER: &str = "the per-call byte hooks";

/// The byte counters: the `tcp_sock` counters when an iterator refreshes live flows (and, under the
/// `sockops` lifecycle, which cannot name a connection's owner, the owner hooks attach), else the
/// first per-call hook that attaches (they name the owner), else the counters at close only.
fn tcp_bytes(
    ebpf: &mut Ebpf,
    targets: &hooks::Targets<'_>,
    settings: &EbpfSettings,
    lifecycle: &HookStatus,
    live: &HookStatus,
) -> (HookStatus, HookStatus) {
    let counters = hooks::TCP_BYTES_COUNTERS;
    let mut counters_off = if live.chosen.is_none() {
        Some("no iterator refreshes live counters (see tcp_live_counters)".to_string())
    } else if settings.disabled_hooks.iter().any(|d| d == counters) {
        Some("disabled by config (disabled_hooks)".to_string())
    } else {
        None
    };
    let sockops = lifecycle.chosen.as_deref() != Some(hooks::TCP_LIFECYCLE[0].hook);
    let without_hook = |chosen: &str| HookStatus {
        capability: "tcp_owner",
        chosen: Some(chosen.into()),
        rejected: vec![Rejected { hook: hooks::TCP_OWNER[0].hook.into(), reason: "not needed".into() }],
    };
    let mut owner = if !sockops {
        without_hook(
            "the lifecycle at connect(); the socket iterator or the byte hooks for accepted connections",
        )
    } else if counters_off.is_some() {
        without_hook(PER_CALL_OWNER)
    } else {
        let owner = hooks::attach_first(ebpf, targets, "tcp_owner", hooks::TCP_OWNER, None);
        if owner.chosen.is_none() {
            counters_off = Some(format!(
                "the sockops lifecycle cannot name a connection's owner, and no owner hook attached: {}",
                owner
                    .rejected
                    .iter()
                    .map(|r| format!("{}: {}", r.hook, r.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        owner
    };
    let preset = counters_off.is_none().then_some(counters);
    let mut bytes = hooks::attach_first(ebpf, targets, "tcp_bytes", hooks::TCP_BYTES, preset);
    if let Some(reason) = counters_off {
        bytes.rejected.insert(0, Rejected { hook: counters.into(), reason });
    }
    if bytes.chosen.is_none() {
        bytes.chosen = Some(hooks::TCP_BYTES_AT_CLOSE.to_string());
        if sockops && owner.chosen.as_deref() == Some(PER_CALL_OWNER) {
            // Nothing names the owner: neither an owner hook nor a per-call byte hook attached.
            owner.chosen = None;
            owner.rejected.push(Rejected {
                hook: PER_CALL_OWNER.into(),
                reason: "no per-call byte hook attached (see tcp_bytes)".into(),
            });
        }
    }
    (bytes, owner)
}

/// Attaches the UDP programs (UDP counting and DNS capture share them: the UDP functions' where
/// the kernel allows, else `cgroup_skb`), the `cgroup_skb` programs for DNS over TCP where wanted,
/// and the sender's process hooks the UDP programs need on this kernel.
pub fn udp_and_dns(ebpf: &mut Ebpf, targets: &hooks::Targets<'_>, settings: &EbpfSettings) -> Udp {
    let mut config_bits = 0;
    let udp = if settings.udp || settings.dns {
        let mut h = hooks::attach_first(ebpf, targets, "udp", hooks::UDP, None);
        if !settings.udp {
            config_bits |= k::CFG_NO_UDP_FLOWS;
            h.rejected.push(Rejected {
                hook: "udp flows".into(),
                reason: "disabled by config (udp = false): attached for DNS only".into(),
            });
        }
        h
    } else {
        off("udp", hooks::UDP[0].hook, "disabled by config (udp = false)")
    };
    let process = choice::udp_process(ebpf, targets, &udp, settings.udp);
    let dns_on = settings.dns && udp.chosen.is_some();
    let functions = udp.chosen.as_deref() == Some(hooks::UDP_FUNCTIONS);
    let dns = if dns_on {
        config_bits |= k::CFG_DNS;
        let (dns, bits) = dns_tcp(ebpf, targets, settings.dns_tcp, functions);
        config_bits |= bits;
        dns
    } else if !settings.dns {
        off("dns", "cgroup_skb", "disabled by config (dns = false)")
    } else {
        off("dns", "cgroup_skb", "the UDP programs did not attach (see udp)")
    };
    let senders = process.chosen.as_deref().is_some_and(|c| hooks::UDP_SENDERS.iter().any(|s| s.hook == c));
    Udp { udp, process, dns, dns_on, senders, config_bits }
}

/// DNS capture: UDP from the UDP programs; TCP from the `cgroup_skb` programs, which count UDP as
/// well unless the UDP function hooks do (`functions`): then they are attached for it only when
/// `dns_tcp` is `on`. Returns the status and the configuration bits.
fn dns_tcp(
    ebpf: &mut Ebpf,
    targets: &hooks::Targets<'_>,
    want: DnsTcp,
    functions: bool,
) -> (HookStatus, u32) {
    let udp_hook = if functions { "fentry" } else { "cgroup_skb" };
    let only_udp = |reason: &str| HookStatus {
        capability: "dns",
        chosen: Some(format!("{udp_hook} (port 53, UDP only)")),
        rejected: vec![Rejected { hook: "cgroup_skb (DNS over TCP)".into(), reason: reason.into() }],
    };
    match (want, functions) {
        (DnsTcp::Off, _) => (only_udp("disabled by config (dns.tcp = off)"), k::CFG_NO_TCP_DNS),
        (DnsTcp::Auto, true) => (
            only_udp(
                "dns.tcp = auto: UDP is counted by the UDP functions, and DNS over TCP would add a \
                 cgroup_skb program on every TCP packet (dns.tcp = on to copy it)",
            ),
            0,
        ),
        (DnsTcp::Auto | DnsTcp::On, false) => (
            HookStatus {
                capability: "dns",
                chosen: Some("cgroup_skb (port 53, UDP and TCP)".into()),
                rejected: vec![],
            },
            0,
        ),
        (DnsTcp::On, true) => {
            let mut tcp = hooks::attach_first(ebpf, targets, "dns", hooks::UDP_PACKETS, None);
            match tcp.chosen.take() {
                Some(skb) => {
                    tcp.chosen = Some(format!("fentry (port 53, UDP); {skb} (port 53, TCP)"));
                    (tcp, k::CFG_SKB_TCP_ONLY)
                }
                None => {
                    tcp.chosen = Some("fentry (port 53, UDP only)".into());
                    (tcp, 0)
                }
            }
        }
    }
}

/// A capability with nothing attached, and why.
fn off(capability: &'static str, hook: &str, reason: &str) -> HookStatus {
    HookStatus {
        capability,
        chosen: None,
        rejected: vec![Rejected { hook: hook.into(), reason: reason.into() }],
    }
}

/// Tells the kernel programs what was chosen (`CONFIG[0]`; nothing to write for 0).
pub fn write_config(ebpf: &mut Ebpf, bits: u32) -> Result<(), CollectorError> {
    if bits == 0 {
        return Ok(());
    }
    let mut config: Array<_, u32> = take(ebpf, k::MAP_CONFIG)?;
    config.set(0, bits, 0).map_err(|e| CollectorError::Map { map: "CONFIG", reason: e.to_string() })
}

/// One line per capability, one per rejected candidate.
pub fn log(hooks: &[HookStatus]) {
    for h in hooks {
        tracing::info!(capability = h.capability, chosen = h.chosen.as_deref().unwrap_or("none"), "hook");
        for r in &h.rejected {
            tracing::info!(capability = h.capability, hook = %r.hook, reason = %r.reason, "hook not used");
        }
    }
}
