//! Kernel-dependent choices of the eBPF collector that are not a plain "first candidate that
//! loads": where the process of a UDP flow comes from, which iterator program runs, and which
//! `tcp_recvmsg` argument holds the flags for the kprobe byte hook.

use aya::Ebpf;

use super::hooks;
use crate::collector::{HookStatus, Rejected};

/// Where the process of a UDP flow comes from: the UDP programs themselves, or (when the kernel
/// lets them call no task helper) a hook at the end of `udp_sendmsg`.
pub fn udp_process(
    ebpf: &mut Ebpf,
    targets: &hooks::Targets<'_>,
    udp: &HookStatus,
    udp_on: bool,
) -> HookStatus {
    let in_program = match udp.chosen.as_deref() {
        Some(hooks::UDP_FUNCTIONS) => Some("fentry/ip_send_skb+ip6_send_skb (pid and comm)"),
        Some(hooks::UDP_OWNER_FULL) => Some("cgroup_skb (pid and comm)"),
        Some(hooks::UDP_OWNER_PID) => Some("cgroup_skb (pid; comm from /proc/<pid>/comm)"),
        _ => None,
    };
    if udp.chosen.is_none() || !udp_on {
        return HookStatus {
            capability: "udp_process",
            chosen: None,
            rejected: vec![Rejected { hook: "udp_process".into(), reason: "no UDP flows (see udp)".into() }],
        };
    }
    // With the process named in the programs, the sender hooks are only probed (for /status).
    hooks::attach_first(ebpf, targets, "udp_process", hooks::UDP_SENDERS, in_program)
}

/// The program of the candidate named `chosen` (single-program candidates).
pub fn program_of(candidates: &[hooks::Candidate], chosen: Option<&str>) -> Option<&'static str> {
    let chosen = chosen?;
    candidates.iter().find(|c| c.hook == chosen).and_then(|c| c.programs.first()).map(|(name, _)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterator_program_of_each_live_candidate() {
        for c in hooks::TCP_LIVE {
            assert_eq!(program_of(hooks::TCP_LIVE, Some(c.hook)), Some(c.programs[0].0));
        }
        assert_eq!(program_of(hooks::TCP_LIVE, None), None);
        assert_eq!(program_of(hooks::TCP_LIVE, Some("other")), None);
    }
}
