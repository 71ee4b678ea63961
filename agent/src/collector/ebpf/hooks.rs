//! Hook selection: per capability, an ordered list of candidate hooks; the
//! first whose programs all load and attach wins, and `/status` reports the
//! choice together with why each better candidate failed.

use std::fs::File;

use aya::programs::{
    BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, FEntry, FExit, Iter, KProbe,
    ProgramError, SockOps,
};
use aya::{Btf, Ebpf};

use crate::collector::{HookStatus, Rejected};

/// How one program attaches.
#[derive(Clone, Copy, Debug)]
pub enum Attach {
    /// BTF-enabled raw tracepoint (`tp_btf`), by tracepoint name.
    TpBtf(&'static str),
    /// BPF trampoline at function entry.
    FEntry(&'static str),
    /// BPF trampoline at function exit.
    FExit(&'static str),
    /// cgroup_skb on the cgroup v2 root.
    CgroupSkb(CgroupSkbAttachType),
    /// sockops on the cgroup v2 root.
    SockOps,
    /// cgroup/sock_release on the cgroup v2 root.
    SockRelease,
    /// BPF iterator, by iterator type: loaded here, run (attached and read) on every scan.
    Iter(&'static str),
    /// kprobe or kretprobe (the object's section says which), by function name.
    KProbe(&'static str),
}

/// A set of programs that together provide one capability.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    /// Name shown in `/status`.
    pub hook: &'static str,
    /// `(program name in the object, attach point)`.
    pub programs: &'static [(&'static str, Attach)],
}

/// What the kernel needs in order to attach.
pub struct Targets<'a> {
    pub btf: &'a Btf,
    pub cgroup: Option<&'a File>,
    /// Hook names the configuration turned off (`disabled_hooks`).
    pub disabled: &'a [String],
}

/// Attaches the first candidate that works. `chosen` is `None` if none did. With
/// `already`, the capability is provided elsewhere and every candidate is only probed.
pub fn attach_first(
    ebpf: &mut Ebpf,
    targets: &Targets<'_>,
    capability: &'static str,
    candidates: &[Candidate],
    already: Option<&str>,
) -> HookStatus {
    let mut status = HookStatus { capability, chosen: already.map(String::from), rejected: Vec::new() };
    for c in candidates {
        if let Some(chosen) = &status.chosen {
            // Say whether it would have worked, so /status shows what this kernel refuses.
            let verdict = match probe(ebpf, targets, c) {
                Ok(()) => "it loads here".to_string(),
                Err(reason) => format!("it would fail here: {reason}"),
            };
            status.rejected.push(Rejected {
                hook: c.hook.to_string(),
                reason: format!("not needed: {chosen} is preferred; {verdict}"),
            });
            continue;
        }
        if targets.disabled.iter().any(|d| d == c.hook) {
            status.rejected.push(Rejected {
                hook: c.hook.to_string(),
                reason: "disabled by config (disabled_hooks)".into(),
            });
            continue;
        }
        match attach_all(ebpf, targets, c) {
            Ok(()) => status.chosen = Some(c.hook.to_string()),
            Err(reason) => status.rejected.push(Rejected { hook: c.hook.to_string(), reason }),
        }
    }
    status
}

fn attach_all(ebpf: &mut Ebpf, targets: &Targets<'_>, c: &Candidate) -> Result<(), String> {
    for (i, (name, how)) in c.programs.iter().enumerate() {
        if let Err(e) = attach_one(ebpf, targets, name, *how) {
            for (done, _) in &c.programs[..i] {
                unload(ebpf, done);
            }
            unload(ebpf, name);
            return Err(format!("{name}: {e}"));
        }
    }
    Ok(())
}

/// Loads (without attaching) every program of a candidate, then unloads them.
fn probe(ebpf: &mut Ebpf, t: &Targets<'_>, c: &Candidate) -> Result<(), String> {
    let mut result = Ok(());
    for (name, how) in c.programs {
        if let Err(e) = load_one(ebpf, t, name, *how) {
            result = Err(format!("{name}: {e}"));
        }
        unload(ebpf, name);
        if result.is_err() {
            break;
        }
    }
    result
}

fn load_one(ebpf: &mut Ebpf, t: &Targets<'_>, name: &str, how: Attach) -> Result<(), String> {
    let prog = ebpf.program_mut(name).ok_or_else(|| format!("program {name} missing from the object"))?;
    match how {
        Attach::TpBtf(tp) => {
            <&mut BtfTracePoint>::try_from(prog).map_err(describe)?.load(tp, t.btf).map_err(describe)
        }
        Attach::FEntry(f) => {
            <&mut FEntry>::try_from(prog).map_err(describe)?.load(f, t.btf).map_err(trampoline)
        }
        Attach::FExit(f) => {
            <&mut FExit>::try_from(prog).map_err(describe)?.load(f, t.btf).map_err(trampoline)
        }
        Attach::CgroupSkb(_) => <&mut CgroupSkb>::try_from(prog).map_err(describe)?.load().map_err(describe),
        Attach::SockOps => <&mut SockOps>::try_from(prog).map_err(describe)?.load().map_err(describe),
        Attach::SockRelease => <&mut CgroupSock>::try_from(prog).map_err(describe)?.load().map_err(describe),
        Attach::Iter(kind) => {
            <&mut Iter>::try_from(prog).map_err(describe)?.load(kind, t.btf).map_err(describe)
        }
        Attach::KProbe(_) => {
            <&mut KProbe>::try_from(prog).map_err(describe)?.load().map_err(describe)?;
            if kprobes_supported() { Ok(()) } else { Err(NO_KPROBES.into()) }
        }
    }
}

const NO_KPROBES: &str = "this kernel has no kprobe support (CONFIG_KPROBES is off)";

fn kprobes_supported() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists()
}

fn attach_one(ebpf: &mut Ebpf, t: &Targets<'_>, name: &str, how: Attach) -> Result<(), String> {
    let prog = ebpf.program_mut(name).ok_or_else(|| format!("program {name} missing from the object"))?;
    match how {
        Attach::TpBtf(tp) => {
            let p: &mut BtfTracePoint = prog.try_into().map_err(describe)?;
            p.load(tp, t.btf).map_err(describe)?;
            p.attach().map_err(describe)?;
        }
        Attach::FEntry(f) => {
            let p: &mut FEntry = prog.try_into().map_err(describe)?;
            p.load(f, t.btf).map_err(trampoline)?;
            p.attach().map_err(trampoline)?;
        }
        Attach::FExit(f) => {
            let p: &mut FExit = prog.try_into().map_err(describe)?;
            p.load(f, t.btf).map_err(trampoline)?;
            p.attach().map_err(trampoline)?;
        }
        Attach::CgroupSkb(kind) => {
            let cgroup = t.cgroup.ok_or("no cgroup v2 hierarchy is mounted")?;
            let p: &mut CgroupSkb = prog.try_into().map_err(describe)?;
            p.load().map_err(describe)?;
            // The default mode: AllowMultiple is refused (EINVAL) by link-based attach on some kernels.
            p.attach(cgroup, kind, CgroupAttachMode::default()).map_err(describe)?;
        }
        Attach::SockRelease => {
            let cgroup = t.cgroup.ok_or("no cgroup v2 hierarchy is mounted")?;
            let p: &mut CgroupSock = prog.try_into().map_err(describe)?;
            p.load().map_err(describe)?;
            p.attach(cgroup, CgroupAttachMode::default()).map_err(describe)?;
        }
        Attach::Iter(kind) => {
            let p: &mut Iter = prog.try_into().map_err(describe)?;
            p.load(kind, t.btf).map_err(describe)?;
            run_iter(p)?;
        }
        Attach::KProbe(f) => {
            let p: &mut KProbe = prog.try_into().map_err(describe)?;
            p.load().map_err(describe)?;
            p.attach(f, 0).map_err(|e| {
                let s = describe(e);
                if kprobes_supported() { s } else { format!("{s} ({NO_KPROBES})") }
            })?;
        }
        Attach::SockOps => {
            let cgroup = t.cgroup.ok_or("no cgroup v2 hierarchy is mounted")?;
            let p: &mut SockOps = prog.try_into().map_err(describe)?;
            p.load().map_err(describe)?;
            p.attach(cgroup, CgroupAttachMode::default()).map_err(describe)?;
        }
    }
    Ok(())
}

fn unload(ebpf: &mut Ebpf, name: &str) {
    let Some(prog) = ebpf.program_mut(name) else {
        return;
    };
    let result = if let Ok(p) = <&mut BtfTracePoint>::try_from(&mut *prog) {
        p.unload()
    } else if let Ok(p) = <&mut FEntry>::try_from(&mut *prog) {
        p.unload()
    } else if let Ok(p) = <&mut FExit>::try_from(&mut *prog) {
        p.unload()
    } else if let Ok(p) = <&mut CgroupSkb>::try_from(&mut *prog) {
        p.unload()
    } else if let Ok(p) = <&mut SockOps>::try_from(&mut *prog) {
        p.unload()
    } else if let Ok(p) = <&mut KProbe>::try_from(&mut *prog) {
        p.unload()
    } else if let Ok(p) = <&mut CgroupSock>::try_from(&mut *prog) {
        p.unload()
    } else if let Ok(p) = <&mut Iter>::try_from(&mut *prog) {
        p.unload()
    } else {
        Ok(())
    };
    if let Err(e) = result {
        tracing::debug!(program = name, error = %e, "unload after a failed attach");
    }
}

/// Runs a loaded iterator once: a new link and iterator fd, read to the end.
pub fn run_iter(p: &mut Iter) -> Result<(), String> {
    let id = p.attach().map_err(describe)?;
    let link = p.take_link(id).map_err(describe)?;
    let mut file = link.into_file().map_err(|e| describe_any(&e))?;
    std::io::copy(&mut file, &mut std::io::sink()).map_err(|e| format!("reading the iterator: {e}"))?;
    Ok(())
}

/// One line: the error and its causes; verifier logs cut to their last lines.
pub fn describe(e: impl Into<ProgramError>) -> String {
    let e: ProgramError = e.into();
    if let ProgramError::LoadError { io_error, verifier_log } = &e {
        let log = verifier_log.to_string();
        let tail: Vec<&str> = log.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
        if tail.iter().all(|l| l.trim().is_empty()) {
            return format!("the kernel refused to load it ({io_error}; no verifier log)");
        }
        return format!("the kernel refused to load it ({io_error}); verifier: {}", tail.join(" | "));
    }
    describe_any(&e)
}

fn trampoline(e: ProgramError) -> String {
    let s = describe(e);
    if s.contains("Operation not permitted") || s.contains("os error 1)") {
        format!(
            "{s} (this kernel refuses BPF trampolines, fentry/fexit: kernel lockdown or a \
             security policy; Eddy falls back to the next candidate)"
        )
    } else if s.contains("os error 524)") {
        format!(
            "{s} (ENOTSUPP: this kernel has no BPF trampolines, fentry/fexit, on this architecture: \
             arm64 before 6.4; Eddy falls back to the next candidate)"
        )
    } else {
        s
    }
}

/// TCP connection lifecycle (open, close, failure): required.
pub const TCP_LIFECYCLE: &[Candidate] = &[
    Candidate {
        hook: "tp_btf/inet_sock_set_state+tcp_destroy_sock",
        programs: &[
            ("eddy_state", Attach::TpBtf("inet_sock_set_state")),
            ("eddy_destroy", Attach::TpBtf("tcp_destroy_sock")),
        ],
    },
    // Final record at CLOSE and release (not at destroy): an abort's error set after CLOSE is missed.
    Candidate {
        hook: "sockops+cgroup/sock_release",
        programs: &[("eddy_sockops", Attach::SockOps), ("eddy_sock_release", Attach::SockRelease)],
    },
];

/// Live retransmit counts (final counts come from tcp_sock at close regardless).
pub const TCP_RETRANSMITS: &[Candidate] = &[Candidate {
    hook: "tp_btf/tcp_retransmit_skb",
    programs: &[("eddy_retransmit", Attach::TpBtf("tcp_retransmit_skb"))],
}];

/// Live tcp_sock counters (segments, RTT, retransmits; bytes in the preferred mode) for every
/// TCP socket a process holds, in every network namespace, refreshed on every scan.
pub const TCP_LIVE: &[Candidate] = &[
    Candidate { hook: "iter/task_file", programs: &[("eddy_iter_sockets", Attach::Iter("task_file"))] },
    // Kernels (6.18) whose verifier treats the iterated socket as untrusted: no helper may take it,
    // so this variant reads it through probe reads and keys it by its existing cookie.
    Candidate {
        hook: "iter/task_file (probe reads)",
        programs: &[(ITER_PROBE_READS, Attach::Iter("task_file"))],
    },
    // Kernels without bpf_sock_from_file (5.10): socket files found by their sockfs inode, the
    // rest as the probe-read variant (so no per-call byte hook is needed there either).
    Candidate {
        hook: "iter/task_file (probe reads, sockets by inode)",
        programs: &[(ITER_INODE, Attach::Iter("task_file"))],
    },
];

/// The iterator variant that reads the socket through probe reads (and keys it by its existing cookie).
pub const ITER_PROBE_READS: &str = "eddy_iter_sockets_ro";

/// The probe-read variant that finds socket files without `bpf_sock_from_file` (5.11+).
pub const ITER_INODE: &str = "eddy_iter_sockets_inode";

/// The preferred byte source: tcp_sock counters, read at CLOSE and by [`TCP_LIVE`] on every scan.
/// No per-call cost; wire payload bytes (what TCP sent once and received), exact for every
/// connection at close.
pub const TCP_BYTES_COUNTERS: &str = "tcp_sock counters (live via iter/task_file)";

/// Per-call TCP payload bytes (what the application wrote and read), in order of preference.
pub const TCP_BYTES: &[Candidate] = &[
    Candidate {
        hook: "tp_btf/sock_send_length+sock_recv_length",
        programs: &[
            ("eddy_send_tp", Attach::TpBtf("sock_send_length")),
            ("eddy_recv_tp", Attach::TpBtf("sock_recv_length")),
        ],
    },
    Candidate {
        hook: "fexit/tcp_sendmsg+tcp_recvmsg",
        programs: &[
            ("eddy_send_fexit", Attach::FExit("tcp_sendmsg")),
            ("eddy_recv_fexit", Attach::FExit("tcp_recvmsg")),
        ],
    },
    // For kernels without trampolines (e.g. arm64 before 6.0): the tcp_sock counters at each
    // call's entry and return (a kretprobe misses returns while calls block, so no per-call
    // sums). Connections opened before the agent started are not counted by it (their cookie
    // may not exist yet).
    Candidate {
        hook: "kprobe/tcp_sendmsg+tcp_recvmsg+kretprobes",
        programs: &[
            ("eddy_send_kprobe", Attach::KProbe("tcp_sendmsg")),
            ("eddy_send_kretprobe", Attach::KProbe("tcp_sendmsg")),
            ("eddy_recv_kprobe", Attach::KProbe("tcp_recvmsg")),
            ("eddy_recv_kretprobe", Attach::KProbe("tcp_recvmsg")),
        ],
    },
];

/// The owner of each connection (pid, comm; the cgroup where the socket does not name it), taken
/// once per connection in the owner's context, where the lifecycle is `sockops` (which may not ask
/// for the current task) and the bytes come from the counters (no per-call hook runs).
pub const TCP_OWNER: &[Candidate] = &[Candidate {
    hook: "fexit/tcp_connect+inet_accept",
    programs: &[
        ("eddy_connect_owner", Attach::FExit("tcp_connect")),
        ("eddy_accept_owner", Attach::FExit("inet_accept")),
    ],
}];

/// Name of the last-resort byte source, used when no TCP_BYTES candidate attaches and no
/// iterator refreshes live counters. Open connections show 0 bytes until they close.
pub const TCP_BYTES_AT_CLOSE: &str = "tcp_sock counters at close";

/// UDP flows and datagram counts (and DNS capture). First the UDP functions (no program on TCP
/// packets; BPF trampolines and the 5.12 socket cookie helper for tracing programs), then the
/// [`UDP_PACKETS`] programs on every packet.
pub const UDP: &[Candidate] = &[
    Candidate {
        hook: UDP_FUNCTIONS,
        programs: &[
            ("eddy_udp_send_fn", Attach::FEntry("ip_send_skb")),
            ("eddy_udp6_send_fn", Attach::FEntry("ip6_send_skb")),
            ("eddy_udp_recv_fn", Attach::FEntry("__udp_enqueue_schedule_skb")),
        ],
    },
    UDP_PACKETS[0],
    UDP_PACKETS[1],
    UDP_PACKETS[2],
];

/// UDP counted where only UDP passes: the sender's `ip_send_skb`/`ip6_send_skb` and the receiver's
/// `__udp_enqueue_schedule_skb`, which name the sender (pid and comm) in its own context.
pub const UDP_FUNCTIONS: &str = "fentry/ip_send_skb+ip6_send_skb+__udp_enqueue_schedule_skb";

/// The per-packet programs (UDP, and DNS over TCP). The variants differ only in what they may ask
/// about the sending task: kernels differ in which helpers a cgroup_skb program may call.
pub const UDP_PACKETS: &[Candidate] = &[
    Candidate {
        hook: UDP_OWNER_FULL,
        programs: &[
            ("eddy_udp_egress", Attach::CgroupSkb(CgroupSkbAttachType::Egress)),
            ("eddy_udp_ingress", Attach::CgroupSkb(CgroupSkbAttachType::Ingress)),
        ],
    },
    // 6.12: bpf_get_current_comm is refused; the comm is read from /proc/<pid>/comm.
    Candidate {
        hook: UDP_OWNER_PID,
        programs: &[
            ("eddy_udp_egress_pid", Attach::CgroupSkb(CgroupSkbAttachType::Egress)),
            ("eddy_udp_ingress_pid", Attach::CgroupSkb(CgroupSkbAttachType::Ingress)),
        ],
    },
    // 5.10, 6.1: no task helpers at all in cgroup_skb; pid and comm are unknown.
    Candidate {
        hook: UDP_OWNER_NONE,
        programs: &[
            ("eddy_udp_egress_noowner", Attach::CgroupSkb(CgroupSkbAttachType::Egress)),
            ("eddy_udp_ingress_noowner", Attach::CgroupSkb(CgroupSkbAttachType::Ingress)),
        ],
    },
];

/// UDP hook names (as `/status` shows them): the sender's pid and comm from the program.
pub const UDP_OWNER_FULL: &str = "cgroup_skb/ingress+egress";
/// The sender's pid from the program, its comm from `/proc`.
pub const UDP_OWNER_PID: &str = "cgroup_skb/ingress+egress (pid only)";
/// No sender: pid and comm unknown.
pub const UDP_OWNER_NONE: &str = "cgroup_skb/ingress+egress (no process)";

/// Any error with its chain of causes, on one line.
pub fn describe_any(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// The sender of UDP datagrams where the UDP programs cannot name it ([`UDP_OWNER_NONE`]): the
/// end of `udp_sendmsg`/`udpv6_sendmsg` in the sender's context, keyed by socket cookie.
pub const UDP_SENDERS: &[Candidate] = &[
    Candidate {
        hook: "fexit/udp_sendmsg+udpv6_sendmsg",
        programs: &[
            ("eddy_udp_send_fexit", Attach::FExit("udp_sendmsg")),
            ("eddy_udp6_send_fexit", Attach::FExit("udpv6_sendmsg")),
        ],
    },
    Candidate {
        hook: "kprobe/udp_sendmsg+udpv6_sendmsg+kretprobes",
        programs: &[
            ("eddy_udp_send_kprobe", Attach::KProbe("udp_sendmsg")),
            ("eddy_udp_send_kretprobe", Attach::KProbe("udp_sendmsg")),
            ("eddy_udp6_send_kprobe", Attach::KProbe("udpv6_sendmsg")),
            ("eddy_udp6_send_kretprobe", Attach::KProbe("udpv6_sendmsg")),
        ],
    },
];
