//! The eBPF collector: loads `eddy-ebpf`'s object, attaches the best hook per
//! capability (see [`hooks`]), and turns its maps into [`Batch`]es.
//!
//! Closed TCP connections arrive through the `CLOSED` ring buffer (drained on
//! every poll); open ones are read from `TCP_FLOWS`; UDP flows from `UDP_FLOWS`,
//! closed here after `udp_idle_timeout` without packets. Programs stay attached
//! while the source lives; dropping it detaches them.
//!
//! Limits: an increment that races with the eviction of an idle UDP flow (a
//! packet in the microseconds of its deletion) is lost; hash-map iteration
//! while the kernel deletes entries may restart, so live scans are de-duplicated
//! and bounded by twice the map capacity.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::Iter;
use aya::{Btf, Ebpf, EbpfLoader};
use eddy_ebpf::{DnsEvent, Flow, UdpKey, shared as k};

use super::{Batch, CollectorError, FlowSource, HookStatus, MapStatus, Observed, Rejected, SourceStatus};
use crate::clock::Clock;

mod choice;
pub mod convert;
pub mod hooks;
mod proc_comm;
mod senders;

/// A connection that reached CLOSE but whose socket the application still holds (and
/// has not used) for this long is reported as closed and removed from the kernel map.
const STALE_CLOSED_NS: u64 = 60_000_000_000;

/// Settings of the eBPF collector (from the agent's config).
#[derive(Clone, Debug)]
pub struct EbpfSettings {
    pub flow_map_entries: u32,
    pub udp_map_entries: u32,
    pub ring_buffer_bytes: u32,
    pub udp_idle_timeout: Duration,
    pub udp: bool,
    /// Copy DNS packets (port 53, UDP and TCP) for DNS monitoring (the cgroup_skb programs).
    pub dns: bool,
    /// cgroup v2 mount point (cgroup programs are attached at its root).
    pub cgroup_path: Option<PathBuf>,
    /// Hook candidates not to use (names as in `/status`).
    pub disabled_hooks: Vec<String>,
}

/// Reads Eddy's kernel programs.
pub struct EbpfSource {
    // Keeps programs and their links alive; maps below were taken out of it.
    ebpf: Ebpf,
    /// The socket iterator program that loaded (see [`hooks::TCP_LIVE`]): run it before every scan.
    live_iter: Option<&'static str>,
    /// The UDP programs cannot name the sender's command: read it from `/proc/<pid>/comm`.
    comms: Option<proc_comm::ProcComms>,
    /// The start-up sweep that gave older sockets a cookie (probe-read iterator only).
    cookie_sweep: Option<crate::collector::sock_diag::cookies::Sweep>,
    /// The UDP programs cannot name the sender at all: `UDP_OWNERS`, filled at `udp_sendmsg`.
    senders: Option<senders::Senders>,
    iter_errors: u64,
    closed: RingBuf<MapData>,
    /// DNS packets (when DNS monitoring is on and the cgroup_skb programs attached).
    dns: Option<RingBuf<MapData>>,
    dns_malformed_records: u64,
    tcp: BpfHashMap<MapData, u64, Flow>,
    udp: BpfHashMap<MapData, UdpKey, Flow>,
    counters: PerCpuArray<MapData, u64>,
    settings: EbpfSettings,
    clock: Arc<dyn Clock>,
    hooks: Vec<HookStatus>,
    maps: Vec<MapStatus>,
    kernel_counters: [u64; k::CTR_MAX as usize],
    /// Userspace-side drops (malformed ring buffer records, map read errors).
    malformed_records: u64,
    map_read_errors: u64,
}

impl EbpfSource {
    /// Loads and attaches. Fails if the TCP lifecycle hooks cannot attach.
    pub fn start(settings: EbpfSettings, clock: Arc<dyn Clock>) -> Result<Self, CollectorError> {
        raise_memlock();
        let btf = Btf::from_sys_fs()
            .map_err(|e| CollectorError::Load(format!("reading /sys/kernel/btf/vmlinux: {e}")))?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .map_max_entries(k::MAP_TCP_FLOWS, settings.flow_map_entries)
            .map_max_entries(k::MAP_UNTRACKED, settings.flow_map_entries.max(4096))
            .map_max_entries(k::MAP_UDP_FLOWS, settings.udp_map_entries)
            .map_max_entries(k::MAP_CLOSED, settings.ring_buffer_bytes)
            .load(eddy_ebpf::object())
            .map_err(|e| CollectorError::Load(hooks::describe_any(&e)))?;

        let cgroup = match &settings.cgroup_path {
            Some(p) => Some(
                File::open(p)
                    .map_err(|source| CollectorError::Cgroup { path: p.display().to_string(), source })?,
            ),
            None => None,
        };
        let targets =
            hooks::Targets { btf: &btf, cgroup: cgroup.as_ref(), disabled: &settings.disabled_hooks };

        let lifecycle = hooks::attach_first(&mut ebpf, &targets, "tcp_lifecycle", hooks::TCP_LIFECYCLE, None);
        if lifecycle.chosen.is_none() {
            let reasons = lifecycle
                .rejected
                .iter()
                .map(|r| format!("{}: {}", r.hook, r.reason))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(CollectorError::NoHook { capability: "tcp_lifecycle", reasons });
        }
        let retransmits =
            hooks::attach_first(&mut ebpf, &targets, "tcp_retransmits", hooks::TCP_RETRANSMITS, None);
        let live = hooks::attach_first(&mut ebpf, &targets, "tcp_live_counters", hooks::TCP_LIVE, None);
        let counters = hooks::TCP_BYTES_COUNTERS;
        let counters_off = if live.chosen.is_none() {
            Some("no iterator refreshes live counters (see tcp_live_counters)")
        } else if settings.disabled_hooks.iter().any(|d| d == counters) {
            Some("disabled by config (disabled_hooks)")
        } else {
            None
        };
        let preset = counters_off.is_none().then_some(counters);
        let mut bytes = hooks::attach_first(&mut ebpf, &targets, "tcp_bytes", hooks::TCP_BYTES, preset);
        if let Some(reason) = counters_off {
            bytes.rejected.insert(0, Rejected { hook: counters.into(), reason: reason.into() });
        }
        if bytes.chosen.is_none() {
            bytes.chosen = Some(hooks::TCP_BYTES_AT_CLOSE.to_string());
        }
        let mut config_bits = 0;
        if matches!(bytes.chosen.as_deref(), Some(c) if c == counters || c == hooks::TCP_BYTES_AT_CLOSE) {
            config_bits |= k::CFG_BYTES_FROM_TCP_SOCK;
        }
        // kretprobes miss returns when more calls wait at once than they have instances for.
        if bytes.chosen.as_deref().is_some_and(|c| c.starts_with("kprobe/")) {
            config_bits |= k::CFG_BYTES_MAX_AT_CLOSE;
        }
        let live_iter = choice::program_of(hooks::TCP_LIVE, live.chosen.as_deref());
        let mut cookie_sweep = None;
        if live_iter == Some(hooks::ITER_PROBE_READS) {
            // That iterator keys sockets by existing cookies: give one to every older socket.
            let sweep = crate::collector::sock_diag::cookies::sweep(std::path::Path::new("/proc"));
            tracing::info!(
                namespaces = sweep.namespaces,
                sockets = sweep.sockets,
                failed = sweep.failed,
                "socket cookies generated for connections opened before the agent"
            );
            cookie_sweep = Some(sweep);
        }
        if choice::recvmsg_has_nonblock_arg() {
            config_bits |= k::CFG_RECVMSG_NONBLOCK_ARG;
        }
        let udp = if settings.udp || settings.dns {
            // The same cgroup_skb programs carry UDP counting and DNS capture.
            let mut h = hooks::attach_first(&mut ebpf, &targets, "udp", hooks::UDP, None);
            if !settings.udp {
                config_bits |= k::CFG_NO_UDP_FLOWS;
                h.rejected.push(Rejected {
                    hook: "udp flows".into(),
                    reason: "disabled by config (udp = false): attached for DNS only".into(),
                });
            }
            h
        } else {
            HookStatus {
                capability: "udp",
                chosen: None,
                rejected: vec![Rejected {
                    hook: hooks::UDP[0].hook.into(),
                    reason: "disabled by config (udp = false)".into(),
                }],
            }
        };
        let udp_process = choice::udp_process(&mut ebpf, &targets, &udp, settings.udp);
        let dns_on = settings.dns && udp.chosen.is_some();
        if dns_on {
            config_bits |= k::CFG_DNS;
        }
        let dns_hook = HookStatus {
            capability: "dns",
            chosen: dns_on.then(|| "cgroup_skb (port 53, UDP and TCP)".to_string()),
            rejected: if dns_on {
                Vec::new()
            } else if !settings.dns {
                vec![Rejected {
                    hook: "cgroup_skb".into(),
                    reason: "disabled by config (dns = false)".into(),
                }]
            } else {
                vec![Rejected {
                    hook: "cgroup_skb".into(),
                    reason: "the cgroup_skb programs did not attach (see udp)".into(),
                }]
            },
        };
        if config_bits != 0 {
            let mut config: Array<_, u32> = take(&mut ebpf, k::MAP_CONFIG)?;
            config
                .set(0, config_bits, 0)
                .map_err(|e| CollectorError::Map { map: "CONFIG", reason: e.to_string() })?;
        }
        let comms = (udp.chosen.as_deref() == Some(hooks::UDP_OWNER_PID)).then(proc_comm::ProcComms::default);
        let senders = if udp_process
            .chosen
            .as_deref()
            .is_some_and(|c| hooks::UDP_SENDERS.iter().any(|s| s.hook == c))
        {
            Some(senders::Senders::new(take(&mut ebpf, k::MAP_UDP_OWNERS)?))
        } else {
            None
        };
        let hooks = vec![lifecycle, retransmits, live, bytes, udp, udp_process, dns_hook];
        for h in &hooks {
            tracing::info!(capability = h.capability, chosen = h.chosen.as_deref().unwrap_or("none"), "hook");
            for r in &h.rejected {
                tracing::info!(capability = h.capability, hook = %r.hook, reason = %r.reason, "hook not used");
            }
        }

        Ok(EbpfSource {
            closed: take(&mut ebpf, k::MAP_CLOSED)?,
            dns: if dns_on { Some(take(&mut ebpf, k::MAP_DNS)?) } else { None },
            dns_malformed_records: 0,
            tcp: take(&mut ebpf, k::MAP_TCP_FLOWS)?,
            udp: take(&mut ebpf, k::MAP_UDP_FLOWS)?,
            counters: take(&mut ebpf, k::MAP_COUNTERS)?,
            ebpf,
            live_iter,
            comms,
            senders,
            cookie_sweep,
            iter_errors: 0,
            maps: vec![
                MapStatus { name: "tcp_flows", capacity: settings.flow_map_entries.into(), entries: Some(0) },
                MapStatus { name: "udp_flows", capacity: settings.udp_map_entries.into(), entries: Some(0) },
                MapStatus {
                    name: "closed_ring_buffer_bytes",
                    capacity: settings.ring_buffer_bytes.into(),
                    entries: None,
                },
            ],
            settings,
            clock,
            hooks,
            kernel_counters: [0; k::CTR_MAX as usize],
            malformed_records: 0,
            map_read_errors: 0,
        })
    }

    fn drain_closed(&mut self, out: &mut Vec<Observed>) {
        while let Some(item) = self.closed.next() {
            if item.len() < std::mem::size_of::<Flow>() {
                self.malformed_records += 1;
                continue;
            }
            // SAFETY: the item holds at least size_of::<Flow>() bytes written by the
            // kernel program from a `struct eddy_flow`, whose layout `Flow` mirrors
            // (checked at compile time); `Flow` is plain data valid for any bits, and
            // read_unaligned copes with the ring buffer's 8-byte alignment.
            let f: Flow = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Flow>()) };
            out.push(convert::to_record(&f, self.clock.as_ref()));
        }
    }

    /// Refreshes live TCP counters in the map (see `eddy_iter_sockets`).
    fn refresh(&mut self) {
        let Some(program) = self.live_iter else {
            return;
        };
        let result = match self.ebpf.program_mut(program).map(<&mut Iter>::try_from) {
            Some(Ok(p)) => hooks::run_iter(p),
            _ => Err("iterator program missing".to_string()),
        };
        if let Err(e) = result {
            self.iter_errors += 1;
            tracing::warn!(error = %e, "socket iterator failed");
        }
    }

    fn scan_tcp(&mut self, closed: &mut Vec<Observed>) -> Vec<Observed> {
        let limit = 2 * self.settings.flow_map_entries as usize;
        let seen = read_map(&self.tcp, limit, &mut self.map_read_errors);
        self.maps[0].entries = Some(seen.len() as u64);
        let now = self.clock.mono_now_ns();
        let mut live = Vec::with_capacity(seen.len());
        for (cookie, mut f) in seen {
            let stale = f.closed_ns != 0 && now.saturating_sub(f.last_ns) > STALE_CLOSED_NS;
            if stale {
                f.flags |= k::FLAG_CLOSED as u8;
            }
            if f.flags as u32 & k::FLAG_CLOSED != 0 {
                // The ring buffer was full when it closed, or it is stale: collect it from the map.
                closed.push(convert::to_record(&f, self.clock.as_ref()));
                if self.tcp.remove(&cookie).is_err() {
                    self.map_read_errors += 1;
                }
            } else {
                live.push(convert::to_record(&f, self.clock.as_ref()));
            }
        }
        live
    }

    fn scan_udp(&mut self, closed: &mut Vec<Observed>) -> Vec<Observed> {
        let limit = 2 * self.settings.udp_map_entries as usize;
        let now = self.clock.mono_now_ns();
        let idle = self.settings.udp_idle_timeout.as_nanos() as u64;
        let seen = read_map(&self.udp, limit, &mut self.map_read_errors);
        self.maps[1].entries = Some(seen.len() as u64);
        let mut live = Vec::with_capacity(seen.len());
        for (key, mut f) in seen {
            if now.saturating_sub(f.last_ns) > idle {
                if self.udp.remove(&key).is_err() {
                    self.map_read_errors += 1;
                    continue;
                }
                // Re-read is impossible after removal; the copy above is final.
                f.closed_ns = f.last_ns;
                f.flags |= k::FLAG_CLOSED as u8;
                closed.push(convert::to_record(&f, self.clock.as_ref()));
            } else {
                live.push(convert::to_record(&f, self.clock.as_ref()));
            }
        }
        if let Some(comms) = self.comms.as_mut() {
            comms.fill(live.iter_mut().chain(closed.iter_mut()).map(|o| &mut o.record));
        }
        if let Some(senders) = self.senders.as_mut() {
            senders.fill(live.iter_mut().chain(closed.iter_mut()).map(|o| &mut o.record));
        }
        live
    }

    fn read_counters(&mut self) {
        for i in 0..k::CTR_MAX {
            match self.counters.get(&i, 0) {
                Ok(per_cpu) => self.kernel_counters[i as usize] = per_cpu.iter().sum(),
                Err(_) => self.map_read_errors += 1,
            }
        }
    }
}

impl FlowSource for EbpfSource {
    fn kind(&self) -> super::CollectorKind {
        super::CollectorKind::Ebpf
    }

    fn poll(&mut self, scan_live: bool) -> Result<Batch, CollectorError> {
        let mut closed = Vec::new();
        self.drain_closed(&mut closed);
        if !scan_live {
            return Ok(Batch { closed, live: None });
        }
        self.refresh();
        let mut live = self.scan_tcp(&mut closed);
        live.extend(self.scan_udp(&mut closed));
        self.read_counters();
        // Records that closed while we scanned: drain again so they are not lost.
        self.drain_closed(&mut closed);
        Ok(Batch { closed, live: Some(live) })
    }

    fn status(&self) -> SourceStatus {
        let c = |i: u32| self.kernel_counters[i as usize];
        let drops = BTreeMap::from([
            ("tcp_map_full", c(k::CTR_TCP_MAP_FULL)),
            ("tcp_untracked_events", c(k::CTR_TCP_UNTRACKED)),
            ("untracked_set_full", c(k::CTR_UNTRACKED_FULL)),
            ("udp_map_full", c(k::CTR_UDP_MAP_FULL)),
            ("udp_unparsed", c(k::CTR_UDP_UNPARSED)),
            ("ring_buffer_full", c(k::CTR_RINGBUF_FULL)),
            ("malformed_ring_records", self.malformed_records + self.dns_malformed_records),
            ("dns_ring_buffer_full", c(k::CTR_DNS_RINGBUF_FULL)),
            ("dns_unparsed_packets", c(k::CTR_DNS_UNPARSED)),
            ("map_read_errors", self.map_read_errors),
            ("iterator_errors", self.iter_errors),
            ("iterator_sockets_without_cookie", c(k::CTR_ITER_NO_COOKIE)),
            ("cookie_sweep_failed_namespaces", self.cookie_sweep.map_or(0, |s| s.failed)),
        ]);
        let counters = BTreeMap::from([
            ("tcp_connections_tracked", c(k::CTR_TCP_OPENED)),
            ("tcp_closed_delivered", c(k::CTR_CLOSED_SENT)),
            ("iterator_sockets_visited", c(k::CTR_ITER_SOCKETS)),
            ("cookie_sweep_sockets", self.cookie_sweep.map_or(0, |s| s.sockets)),
            ("cookie_sweep_namespaces", self.cookie_sweep.map_or(0, |s| s.namespaces)),
            ("dns_packets_captured", c(k::CTR_DNS_CAPTURED)),
        ]);
        SourceStatus { hooks: self.hooks.clone(), maps: self.maps.clone(), drops, counters }
    }

    fn take_dns(&mut self) -> Vec<crate::dns::DnsPacket> {
        let Some(ring) = self.dns.as_mut() else { return Vec::new() };
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<DnsEvent>() {
                self.dns_malformed_records += 1;
                continue;
            }
            // SAFETY: the item holds at least size_of::<DnsEvent>() bytes written by the kernel
            // program from a `struct eddy_dns_event`, whose layout `DnsEvent` mirrors (checked at
            // compile time); `DnsEvent` is plain data valid for any bits, read unaligned.
            let ev: DnsEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DnsEvent>()) };
            out.push(convert::dns_packet(&ev));
        }
        if let Some(comms) = self.comms.as_mut() {
            for p in &mut out {
                if p.comm.is_none() {
                    p.comm = p.pid.and_then(|pid| comms.get(pid));
                }
            }
        }
        out
    }
}

/// Every entry of a flow map, de-duplicated (iteration restarts when the kernel deletes
/// the entry it is at) and bounded by `limit` steps; read errors are counted.
fn read_map<K>(map: &BpfHashMap<MapData, K, Flow>, limit: usize, errors: &mut u64) -> HashMap<K, Flow>
where
    K: aya::Pod + Eq + std::hash::Hash,
{
    let mut seen = HashMap::new();
    for item in map.iter().take(limit) {
        match item {
            Ok((key, f)) => {
                seen.insert(key, f);
            }
            Err(_) => *errors += 1,
        }
    }
    seen
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, CollectorError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(CollectorError::Map { map: name, reason: "missing from the object".into() })?;
    T::try_from(map).map_err(|e| CollectorError::Map { map: name, reason: e.to_string() })
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones to the
/// memory cgroup. Raising it may be refused (no CAP_SYS_RESOURCE): harmless on
/// 5.11+, and the load error says so otherwise.
fn raise_memlock() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads a valid, initialised rlimit struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "setrlimit(RLIMIT_MEMLOCK) refused");
    }
}
