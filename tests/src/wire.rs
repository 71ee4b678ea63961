//! Links with impairments (delay, loss) between two namespaces.
//!
//! [`ImpairedLink`] uses a veth pair plus `tc netem` when the kernel has netem, and otherwise a [`TunWire`]:
//! one TUN device in each namespace and userspace threads that copy IP packets between them, delaying and
//! dropping on the way. A TUN device without offloads hands out fully checksummed, unsegmented packets, and a
//! packet written to it is received by the stack as if it came from a cable, so both namespaces see a normal
//! point-to-point link.
//!
//! Loss on the TUN wire is deterministic (seeded) and, by default, only hits TCP segments that carry payload,
//! so handshakes and FINs are not delayed by SYN/FIN retransmission timeouts.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns::{
    NetNs, VethLink, add_netem, configure_addrs, netem_available, next_id, next_subnet, subnet_addrs,
    veth_link,
};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it (name + flags, padded to 40 bytes).
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// What to do to packets going from side A to side B.
#[derive(Debug, Clone, Default)]
pub struct WireConfig {
    /// Added one-way delay A→B.
    pub delay_a_to_b: Duration,
    /// Percentage (0–100) of A→B packets dropped.
    pub loss_a_to_b_percent: u32,
    /// Drop only TCP segments with payload (never SYN/FIN/pure ACKs).
    pub loss_only_tcp_payload: bool,
    /// Seed of the loss pattern.
    pub seed: u64,
}

/// Two namespaces joined by TUN devices and forwarding threads; stops and closes the devices on drop.
pub struct TunWire {
    pub a_if: String,
    pub b_if: String,
    pub subnet: u8,
    pub a_v4: Ipv4Addr,
    pub b_v4: Ipv4Addr,
    pub a_v6: Ipv6Addr,
    pub b_v6: Ipv6Addr,
    /// Packets dropped A→B so far.
    pub dropped: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn open_tun(ns: &NetNs, name: String) -> File {
    ns.run(move || {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .unwrap_or_else(|e| panic!("open /dev/net/tun: {e}"));
        let mut req = IfReqFlags { name: [0; libc::IFNAMSIZ], flags: IFF_TUN | IFF_NO_PI, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads a `struct ifreq` (40 bytes) that `req` provides and outlives the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
        assert!(rc == 0, "TUNSETIFF {name}: {}", std::io::Error::last_os_error());
        file
    })
}

/// Waits up to 100 ms for `file` to be readable.
fn readable(file: &File) -> bool {
    let mut pfd = libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, 100) };
    rc > 0 && pfd.revents & libc::POLLIN != 0
}

/// Whether an IP packet is a TCP segment carrying payload.
fn is_tcp_payload(pkt: &[u8]) -> bool {
    match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 20 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
            pkt[9] == 6 && pkt.len() >= ihl + 13 && total > ihl + usize::from(pkt[ihl + 12] >> 4) * 4
        }
        Some(6) if pkt.len() >= 40 + 13 => {
            let payload_len = usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
            pkt[6] == 6 && payload_len > usize::from(pkt[40 + 12] >> 4) * 4
        }
        _ => false,
    }
}

struct Forwarder {
    from: File,
    to: File,
    delay: Duration,
    loss_percent: u32,
    loss_only_tcp_payload: bool,
    seed: u64,
    dropped: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    fn spawn(self, name: String) -> Vec<JoinHandle<()>> {
        let Forwarder { mut from, mut to, delay, loss_percent, loss_only_tcp_payload, seed, dropped, stop } =
            self;
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        let mut handles = Vec::new();
        let writer_stop = stop.clone();
        if !delay.is_zero() {
            let mut to_delayed = to.try_clone().expect("dup tun fd");
            handles.push(
                std::thread::Builder::new()
                    .name(format!("{name}-delay"))
                    .spawn(move || {
                        while !writer_stop.load(Ordering::Relaxed) {
                            let (due, pkt) = match rx.recv_timeout(Duration::from_millis(100)) {
                                Ok(item) => item,
                                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                            };
                            let now = Instant::now();
                            if due > now {
                                std::thread::sleep(due - now);
                            }
                            // A failed write is a lost packet, like on a cable.
                            let _ = to_delayed.write(&pkt);
                        }
                    })
                    .expect("spawn wire thread"),
            );
        }
        handles.push(
            std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    let mut state = seed | 1;
                    let mut buf = vec![0u8; 65536];
                    while !stop.load(Ordering::Relaxed) {
                        if !readable(&from) {
                            continue;
                        }
                        // Drain until EAGAIN.
                        while let Ok(n) = from.read(&mut buf) {
                            let pkt = &buf[..n];
                            if loss_percent > 0 && (!loss_only_tcp_payload || is_tcp_payload(pkt)) {
                                // xorshift64*
                                state ^= state >> 12;
                                state ^= state << 25;
                                state ^= state >> 27;
                                let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33;
                                if (r % 100) < u64::from(loss_percent) {
                                    dropped.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                            }
                            if delay.is_zero() {
                                let _ = to.write(pkt);
                            } else {
                                let _ = tx.send((Instant::now() + delay, pkt.to_vec()));
                            }
                        }
                    }
                })
                .expect("spawn wire thread"),
        );
        handles
    }
}

impl TunWire {
    /// Joins `a` and `b` with TUN devices (10.231.X.1 on A, .2 on B; fd00:e0d1::X:1/2) and starts forwarding.
    pub fn new(a: &NetNs, b: &NetNs, config: WireConfig) -> TunWire {
        let id = next_id();
        let pid = std::process::id() % 100_000;
        let a_if = format!("e{pid}t{id}a");
        let b_if = format!("e{pid}t{id}b");
        let subnet = next_subnet();
        let (a_v4, b_v4, a_v6, b_v6) = subnet_addrs(subnet);
        let a_file = open_tun(a, a_if.clone());
        let b_file = open_tun(b, b_if.clone());
        configure_addrs(a, &a_if, a_v4, a_v6);
        configure_addrs(b, &b_if, b_v4, b_v6);
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let mut threads = Forwarder {
            from: a_file.try_clone().expect("dup tun fd"),
            to: b_file.try_clone().expect("dup tun fd"),
            delay: config.delay_a_to_b,
            loss_percent: config.loss_a_to_b_percent,
            loss_only_tcp_payload: config.loss_only_tcp_payload,
            seed: config.seed,
            dropped: dropped.clone(),
            stop: stop.clone(),
        }
        .spawn(format!("wire-{id}-ab"));
        threads.extend(
            Forwarder {
                from: b_file,
                to: a_file,
                delay: Duration::ZERO,
                loss_percent: 0,
                loss_only_tcp_payload: false,
                seed: 0,
                dropped: Arc::new(AtomicU64::new(0)),
                stop: stop.clone(),
            }
            .spawn(format!("wire-{id}-ba")),
        );
        TunWire { a_if, b_if, subnet, a_v4, b_v4, a_v6, b_v6, dropped, stop, threads }
    }
}

impl Drop for TunWire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Whether an [`ImpairedLink`] can be built here: `tc netem`, or else a TUN device for the userspace wire.
pub fn impairment_available() -> Result<(), String> {
    netem_available().or_else(|netem| {
        OpenOptions::new().read(true).write(true).open("/dev/net/tun").map(drop).map_err(|tun| {
            format!("tc netem is unavailable ({netem}) and /dev/net/tun cannot be opened for the userspace wire ({tun})")
        })
    })
}

/// The impairment wanted on the A→B direction of a link.
#[derive(Debug, Clone, Copy, Default)]
pub struct Impairment {
    pub delay: Duration,
    pub loss_percent: u32,
}

/// A link between two namespaces with an impairment on A's egress: veth + netem, or the TUN wire.
pub enum ImpairedLink {
    Netem(VethLink),
    Tun(TunWire),
}

impl ImpairedLink {
    /// Uses `tc netem` on A's veth when available, else a [`TunWire`] (loss only on TCP payload segments).
    pub fn new(a: &NetNs, b: &NetNs, imp: Impairment) -> ImpairedLink {
        match netem_available() {
            Ok(()) => {
                let link = veth_link(a, b);
                let mut params = String::new();
                if !imp.delay.is_zero() {
                    params.push_str(&format!("delay {}us ", imp.delay.as_micros()));
                }
                if imp.loss_percent > 0 {
                    params.push_str(&format!("loss {}%", imp.loss_percent));
                }
                add_netem(a, &link.a_if, &params).unwrap_or_else(|e| panic!("netem on {}: {e}", link.a_if));
                eprintln!("impaired link: veth + tc netem {params}");
                ImpairedLink::Netem(link)
            }
            Err(why) => {
                eprintln!(
                    "impaired link: tc netem unavailable ({why}); using the userspace TUN wire instead"
                );
                ImpairedLink::Tun(TunWire::new(
                    a,
                    b,
                    WireConfig {
                        delay_a_to_b: imp.delay,
                        loss_a_to_b_percent: imp.loss_percent,
                        loss_only_tcp_payload: true,
                        seed: 0x5eed_0000 ^ u64::from(std::process::id()),
                    },
                ))
            }
        }
    }

    /// Side A's IPv4 address.
    pub fn a_v4(&self) -> IpAddr {
        match self {
            ImpairedLink::Netem(l) => l.a_v4.into(),
            ImpairedLink::Tun(w) => w.a_v4.into(),
        }
    }

    /// Side B's IPv4 address.
    pub fn b_v4(&self) -> IpAddr {
        match self {
            ImpairedLink::Netem(l) => l.b_v4.into(),
            ImpairedLink::Tun(w) => w.b_v4.into(),
        }
    }

    /// Packets the TUN wire dropped (None for netem).
    pub fn dropped(&self) -> Option<u64> {
        match self {
            ImpairedLink::Netem(_) => None,
            ImpairedLink::Tun(w) => Some(w.dropped.load(Ordering::Relaxed)),
        }
    }
}
