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

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, IterableMap, MapData, PerCpuArray, RingBuf};
use aya::programs::Iter;
use aya::{Btf, Ebpf, EbpfLoader};
use eddy_ebpf::{Flow, UdpKey, shared as k};

use super::{Batch, CollectorError, FlowSource, HookStatus, MapStatus, Observed, SourceStatus};
use crate::clock::{Anchored, Clock};

mod attach;
mod batch;
mod choice;
pub mod convert;
mod dns_drain;
pub mod hooks;
mod memory;
mod proc_comm;
mod runs;
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
    /// Copy DNS messages (port 53) for DNS monitoring, from the programs that count UDP.
    pub dns: bool,
    /// DNS over TCP (see [`crate::config::DnsTcp`]).
    pub dns_tcp: crate::config::DnsTcp,
    /// cgroup v2 mount point (cgroup programs are attached at its root).
    pub cgroup_path: Option<PathBuf>,
    /// Hook candidates not to use (names as in `/status`).
    pub disabled_hooks: Vec<String>,
}

/// Entries in the bounded kernel maps as of the last scan.
#[derive(Clone, Copy, Debug)]
struct MapFill {
    tcp_flows: u64,
    udp_flows: u64,
    tcp_capacity: u64,
    udp_capacity: u64,
    ring_buffer_bytes: u64,
}

impl MapFill {
    fn new(s: &EbpfSettings) -> Self {
        MapFill {
            tcp_flows: 0,
            udp_flows: 0,
            tcp_capacity: s.flow_map_entries.into(),
            udp_capacity: s.udp_map_entries.into(),
            ring_buffer_bytes: s.ring_buffer_bytes.into(),
        }
    }

    /// `/status` → `maps`.
    fn status(&self) -> Vec<MapStatus> {
        vec![
            MapStatus { name: "tcp_flows", capacity: self.tcp_capacity, entries: Some(self.tcp_flows) },
            MapStatus { name: "udp_flows", capacity: self.udp_capacity, entries: Some(self.udp_flows) },
            MapStatus { name: "closed_ring_buffer_bytes", capacity: self.ring_buffer_bytes, entries: None },
        ]
    }
}

/// Reads Eddy's kernel programs.
pub struct EbpfSource {
    // Keeps programs and their links alive; maps below were taken out of it.
    ebpf: Ebpf,
    /// The socket iterator program that loaded (see [`hooks::TCP_LIVE`]): run it before every scan.
    live_iter: Option<&'static str>,
    /// The UDP programs cannot name the sender's command: read it from `/proc/<pid>/comm`.
    comms: Option<proc_comm::ProcComms>,
    /// Command names of the kernel records, shared.
    names: convert::Comms,
    /// The start-up sweep that gave older sockets a cookie (probe-read iterator only).
    cookie_sweep: Option<crate::collector::sock_diag::cookies::Sweep>,
    /// The UDP programs cannot name the sender at all: `UDP_OWNERS`, filled at `udp_sendmsg`.
    senders: Option<senders::Senders>,
    iter_errors: u64,
    /// Kernel memory of each map (see [`memory`]).
    kernel_memory: BTreeMap<String, u64>,
    /// Read the flow maps in batches (false once the kernel refused).
    batches: bool,
    closed: RingBuf<MapData>,
    /// DNS packets (when DNS monitoring is on and the cgroup_skb programs attached).
    dns: Option<dns_drain::DnsDrain>,
    tcp: BpfHashMap<MapData, u64, Flow>,
    udp: BpfHashMap<MapData, UdpKey, Flow>,
    counters: PerCpuArray<MapData, u64>,
    settings: EbpfSettings,
    clock: Arc<dyn Clock>,
    hooks: Vec<HookStatus>,
    maps: MapFill,
    kernel_counters: [u64; k::CTR_MAX as usize],
    /// Userspace-side drops (malformed ring buffer records, map read errors).
    malformed_records: u64,
    map_read_errors: u64,
    /// Closed records of the last poll (at most [`CLOSED_HINT_MAX`]): the next batch's
    /// capacity, so draining does not grow it step by step.
    closed_hint: usize,
}

/// The largest batch capacity reserved ahead (about 1 MiB of records).
const CLOSED_HINT_MAX: usize = 4096;

impl EbpfSource {
    /// Loads and attaches (see [`attach`]). Fails if the TCP lifecycle hooks cannot attach.
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
        let tcp = attach::tcp(&mut ebpf, &targets, &settings)?;
        let udp = attach::udp_and_dns(&mut ebpf, &targets, &settings);
        attach::write_config(&mut ebpf, tcp.config_bits | udp.config_bits)?;
        // The pid-only cgroup_skb programs, counting UDP or copying DNS over TCP beside the UDP functions.
        let pid_only = udp.udp.chosen.as_deref() == Some(hooks::UDP_OWNER_PID)
            || udp.dns.chosen.as_deref().is_some_and(|c| c.contains(hooks::UDP_OWNER_PID));
        let comms = pid_only.then(proc_comm::ProcComms::default);
        let senders = match udp.senders {
            true => Some(senders::Senders::new(take(&mut ebpf, k::MAP_UDP_OWNERS)?)),
            false => None,
        };
        let kernel_memory = memory::of_maps(&ebpf);
        let hooks = vec![
            tcp.lifecycle,
            tcp.retransmits,
            tcp.live,
            tcp.bytes,
            tcp.owner,
            udp.udp,
            udp.process,
            udp.dns,
        ];
        attach::log(&hooks);
        Ok(EbpfSource {
            closed: take(&mut ebpf, k::MAP_CLOSED)?,
            dns: if udp.dns_on { Some(dns_drain::DnsDrain::new(take(&mut ebpf, k::MAP_DNS)?)) } else { None },
            tcp: take(&mut ebpf, k::MAP_TCP_FLOWS)?,
            udp: take(&mut ebpf, k::MAP_UDP_FLOWS)?,
            counters: take(&mut ebpf, k::MAP_COUNTERS)?,
            ebpf,
            live_iter: tcp.live_iter,
            comms,
            names: convert::Comms::default(),
            senders,
            cookie_sweep: tcp.cookie_sweep,
            iter_errors: 0,
            kernel_memory,
            batches: true,
            maps: MapFill::new(&settings),
            settings,
            clock,
            hooks,
            kernel_counters: [0; k::CTR_MAX as usize],
            malformed_records: 0,
            map_read_errors: 0,
            closed_hint: 0,
        })
    }

    fn drain_closed(&mut self, out: &mut Vec<Observed>) {
        let clock = Anchored::of(self.clock.as_ref());
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
            out.push(convert::to_record(&f, &clock, &mut self.names));
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

    /// Open TCP flows into `live`; closed ones left in the map (the ring buffer was full
    /// when they closed, or they are stale) into `closed`, and out of the map.
    fn scan_tcp(&mut self, closed: &mut Vec<Observed>, live: &mut Vec<Observed>) {
        let limit = 2 * self.settings.flow_map_entries as usize;
        let clock = Anchored::of(self.clock.as_ref());
        let now = clock.mono_now_ns();
        let names = &mut self.names;
        let mut gone = Vec::new();
        self.maps.tcp_flows =
            each_entry(&self.tcp, limit, &mut self.map_read_errors, &mut self.batches, |cookie, mut f| {
                let stale = f.closed_ns != 0 && now.saturating_sub(f.last_ns) > STALE_CLOSED_NS;
                if stale {
                    f.flags |= k::FLAG_CLOSED as u8;
                }
                if f.flags as u32 & k::FLAG_CLOSED != 0 {
                    closed.push(convert::to_record(&f, &clock, names));
                    gone.push(cookie);
                } else {
                    live.push(convert::to_record(&f, &clock, names));
                }
            });
        for cookie in gone {
            if self.tcp.remove(&cookie).is_err() {
                self.map_read_errors += 1;
            }
        }
    }

    /// Open UDP flows into `live`; flows idle for `udp_idle_timeout` out of the map and into
    /// `closed` (closed at their last packet).
    fn scan_udp(&mut self, closed: &mut Vec<Observed>, live: &mut Vec<Observed>) {
        let limit = 2 * self.settings.udp_map_entries as usize;
        let clock = Anchored::of(self.clock.as_ref());
        let now = clock.mono_now_ns();
        let idle = self.settings.udp_idle_timeout.as_nanos() as u64;
        let names = &mut self.names;
        let (first_live, first_closed) = (live.len(), closed.len());
        let mut idle_flows = Vec::new();
        self.maps.udp_flows =
            each_entry(&self.udp, limit, &mut self.map_read_errors, &mut self.batches, |key, f| {
                if now.saturating_sub(f.last_ns) > idle {
                    idle_flows.push((key, f));
                } else {
                    live.push(convert::to_record(&f, &clock, names));
                }
            });
        for (key, mut f) in idle_flows {
            if self.udp.remove(&key).is_err() {
                self.map_read_errors += 1;
                continue;
            }
            // A packet between the read and the removal is lost (see the module's limits).
            f.closed_ns = f.last_ns;
            f.flags |= k::FLAG_CLOSED as u8;
            closed.push(convert::to_record(&f, &clock, &mut self.names));
        }
        if let Some(comms) = self.comms.as_mut() {
            let records = live[first_live..].iter_mut().chain(closed[first_closed..].iter_mut());
            comms.fill(records.map(|o| &mut o.record));
        }
        if let Some(senders) = self.senders.as_mut() {
            let records = live[first_live..].iter_mut().chain(closed[first_closed..].iter_mut());
            senders.fill(records.map(|o| &mut o.record));
        }
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
        let mut closed = Vec::with_capacity(self.closed_hint);
        self.drain_closed(&mut closed);
        if !scan_live {
            self.closed_hint = closed.len().min(CLOSED_HINT_MAX);
            return Ok(Batch { closed, live: None });
        }
        self.refresh();
        let open = self.maps.tcp_flows + self.maps.udp_flows;
        let mut live = Vec::with_capacity(usize::try_from(open).unwrap_or(0) + 64);
        self.scan_tcp(&mut closed, &mut live);
        self.scan_udp(&mut closed, &mut live);
        self.read_counters();
        // Records that closed while we scanned: drain again so they are not lost.
        self.drain_closed(&mut closed);
        Ok(Batch { closed, live: Some(live) })
    }

    fn status(&self) -> SourceStatus {
        let c = |i: u32| self.kernel_counters[i as usize];
        let (dns_queue_full, dns_malformed) = self.dns.as_ref().map_or((0, 0), dns_drain::DnsDrain::counts);
        let drops = BTreeMap::from([
            ("tcp_map_full", c(k::CTR_TCP_MAP_FULL)),
            ("tcp_untracked_events", c(k::CTR_TCP_UNTRACKED)),
            ("untracked_set_full", c(k::CTR_UNTRACKED_FULL)),
            ("udp_map_full", c(k::CTR_UDP_MAP_FULL)),
            ("udp_unparsed", c(k::CTR_UDP_UNPARSED)),
            ("ring_buffer_full", c(k::CTR_RINGBUF_FULL)),
            ("malformed_ring_records", self.malformed_records + dns_malformed),
            ("dns_ring_buffer_full", c(k::CTR_DNS_RINGBUF_FULL)),
            ("dns_queue_full", dns_queue_full),
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
        SourceStatus {
            hooks: self.hooks.clone(),
            maps: self.maps.status(),
            kernel_memory: self.kernel_memory.clone(),
            programs: runs::of_programs(&self.ebpf),
            drops,
            counters,
        }
    }

    fn take_dns(&mut self) -> Vec<crate::dns::DnsPacket> {
        let Some(drain) = self.dns.as_mut() else { return Vec::new() };
        let mut out = drain.take();
        if let Some(comms) = self.comms.as_mut() {
            for p in &mut out {
                if p.comm.is_none() {
                    p.comm = p.pid.and_then(|pid| comms.get(pid)).map(|c| c.to_string());
                }
            }
        }
        out
    }
}

/// Calls `visit` once for every entry of a flow map, and returns how many there were: in
/// batches ([`batch`]) unless the kernel refused them before (`batches` false), else with
/// aya's iterator (which restarts when the kernel deletes the entry it is at: entries seen
/// before are skipped), in at most `limit` steps; also when a batch read fails midway.
/// Read errors are counted.
fn each_entry<K>(
    map: &BpfHashMap<MapData, K, Flow>,
    limit: usize,
    errors: &mut u64,
    batches: &mut bool,
    mut visit: impl FnMut(K, Flow),
) -> u64
where
    K: aya::Pod + Eq + std::hash::Hash,
{
    if *batches {
        match batch::read_all(map.map().fd(), &mut visit) {
            Ok(n) => return n,
            Err(e @ batch::BatchError::Unsupported(_)) => {
                tracing::info!(error = %e, "reading flow maps entry by entry");
                *batches = false;
            }
            Err(e @ batch::BatchError::Failed { .. }) => {
                // Read it all again entry by entry: entries visited twice are harmless
                // (the flow table keys them; a second removal fails and is counted).
                tracing::debug!(error = %e, "flow map batch read failed");
                *errors += 1;
            }
        }
    }
    let mut seen = HashSet::new();
    for item in map.iter().take(limit) {
        match item {
            Ok((key, f)) => {
                if seen.insert(key) {
                    visit(key, f);
                }
            }
            Err(_) => *errors += 1,
        }
    }
    seen.len() as u64
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
