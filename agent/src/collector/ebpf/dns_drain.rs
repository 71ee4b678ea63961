//! The DNS ring buffer, drained by a thread of its own (woken by the kernel when packets
//! arrive, then at most every [`DRAIN_EVERY`] while they keep coming), so that DNS
//! packets are taken from the kernel while the collector thread scans a large flow table (a
//! scan of 100,000s of flows takes longer than the 1 MiB ring lasts under a DNS flood).
//! The collector takes what was drained with [`DnsDrain::take`].
//!
//! Bounded: at most [`MAX_QUEUED`] packets wait for the collector; beyond, packets are
//! counted in `dropped` (`/status` → `drops.dns_queue_full`). The thread is started by the
//! first [`DnsDrain::take`] (on the collector thread, after the agent dropped its
//! capabilities, so it inherits the reduced set) and stops when the drain is dropped.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use eddy_ebpf::DnsEvent;

use super::convert;
use crate::dns::DnsPacket;

/// How often the thread drains the ring buffer at most.
pub const DRAIN_EVERY: Duration = Duration::from_millis(5);
/// How long an idle thread waits for packets before it checks whether to stop.
const IDLE_WAIT_MS: i32 = 100;
/// Packets waiting for the collector, at most.
pub const MAX_QUEUED: usize = 65_536;

#[derive(Debug, Default)]
struct Queue {
    packets: Vec<DnsPacket>,
    dropped: u64,
    malformed: u64,
}

/// Owns the ring buffer (handed to its thread on the first take).
pub struct DnsDrain {
    ring: Option<RingBuf<MapData>>,
    queue: Arc<Mutex<Queue>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsDrain {
    pub fn new(ring: RingBuf<MapData>) -> Self {
        DnsDrain { ring: Some(ring), queue: Arc::default(), stop: Arc::default(), thread: None }
    }

    /// The packets drained since the last call (the first call starts the thread).
    pub fn take(&mut self) -> Vec<DnsPacket> {
        if let Some(ring) = self.ring.take() {
            let (queue, stop) = (self.queue.clone(), self.stop.clone());
            match std::thread::Builder::new().name("eddy-dns".into()).spawn(move || run(ring, &queue, &stop))
            {
                Ok(t) => self.thread = Some(t),
                Err(e) => tracing::error!(error = %e, "cannot start the DNS drain thread: no DNS statistics"),
            }
        }
        std::mem::take(&mut self.queue.lock().unwrap_or_else(PoisonError::into_inner).packets)
    }

    /// Packets dropped because the collector did not take them in time, and malformed records.
    pub fn counts(&self) -> (u64, u64) {
        let q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        (q.dropped, q.malformed)
    }
}

impl Drop for DnsDrain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::warn!("the DNS drain thread panicked");
        }
    }
}

fn run(mut ring: RingBuf<MapData>, queue: &Mutex<Queue>, stop: &AtomicBool) {
    let mut batch = Vec::new();
    let mut malformed = 0;
    while !stop.load(Ordering::SeqCst) {
        while let Some(item) = ring.next() {
            if item.len() < size_of::<DnsEvent>() {
                malformed += 1;
                continue;
            }
            // SAFETY: the item holds at least size_of::<DnsEvent>() bytes written by the kernel
            // program from a `struct eddy_dns_event`, whose layout `DnsEvent` mirrors (checked at
            // compile time); `DnsEvent` is plain data valid for any bits, read unaligned.
            let ev: DnsEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DnsEvent>()) };
            batch.push(convert::dns_packet(&ev));
        }
        if batch.is_empty() && malformed == 0 {
            wait_readable(&ring);
            continue;
        }
        {
            let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
            let room = MAX_QUEUED.saturating_sub(q.packets.len());
            let over = batch.len().saturating_sub(room);
            q.dropped += over as u64;
            batch.truncate(room);
            q.packets.append(&mut batch);
            q.malformed += std::mem::take(&mut malformed);
            batch.clear();
        }
        std::thread::sleep(DRAIN_EVERY);
    }
}

/// Waits up to [`IDLE_WAIT_MS`] for the ring buffer to have data.
fn wait_readable(ring: &RingBuf<MapData>) {
    let mut fds = [libc::pollfd { fd: ring.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
    // SAFETY: poll(2) on one valid pollfd whose descriptor the ring buffer keeps open.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, IDLE_WAIT_MS) };
    if rc < 0 {
        std::thread::sleep(DRAIN_EVERY);
    }
}
