//! A DNS flood: queries for random names, spread over many DNS servers that this module runs.
//!
//! What: [`Responders::start`] binds UDP port 53 on 127.0.53.1 .. 127.0.53.N inside the soak's
//! namespace and answers every query (NOERROR with one A record for names starting with `a`,
//! NXDOMAIN otherwise); [`flood`] sends queries for random names (`<16 hex>.<8 hex>.soak.test`,
//! type A or AAAA) round-robin over the servers from a pool of client sockets, at a fixed rate,
//! until told to stop, and counts the answers it gets.
//!
//! Limits: UDP only; the rate is paced per 10 ms slot (a loaded machine may send fewer).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Address of DNS server `i` (0-based).
pub fn server(i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, 53, 1 + (i % 250) as u8), 53))
}

/// A small xorshift generator (names need not be cryptographic, only unlike each other).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// A query for `name` with `id` and `qtype` (1 = A, 28 = AAAA), recursion desired.
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend(label.as_bytes());
    }
    m.extend([0, (qtype >> 8) as u8, qtype as u8, 0, 1]);
    m
}

/// The answer to `q`: NOERROR and one A record (pointer to the question) for names whose first
/// label starts with `a`, else NXDOMAIN; `None` for anything that is not a plain query.
pub fn answer(q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 17 || q[2] & 0x80 != 0 || q[4..6] != [0, 1] {
        return None;
    }
    let mut r = q.to_vec();
    r[2] |= 0x80; // QR
    r[3] = 0x80; // RA, rcode 0
    if q[13] == b'a' && u16::from_be_bytes([q[q.len() - 4], q[q.len() - 3]]) == 1 {
        r[6..8].copy_from_slice(&[0, 1]);
        r.extend([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 53, 53, 53]);
    } else {
        r[3] |= 3; // NXDOMAIN
    }
    Some(r)
}

/// DNS servers answering on [`server`]`(0..n)`; they stop when `stop` is set.
pub struct Responders {
    pub threads: Vec<JoinHandle<()>>,
    pub answered: Arc<AtomicU64>,
}

impl Responders {
    /// Binds the servers (call from a thread inside the namespace) and starts `threads` threads.
    pub fn start(n: usize, threads: usize, stop: &Arc<AtomicBool>) -> Result<Responders> {
        let sockets: Vec<UdpSocket> = (0..n)
            .map(|i| {
                let s = UdpSocket::bind(server(i)).with_context(|| format!("binding {}", server(i)))?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .collect::<Result<_>>()?;
        let answered = Arc::new(AtomicU64::new(0));
        let mut groups: Vec<Vec<UdpSocket>> = (0..threads.max(1)).map(|_| Vec::new()).collect();
        let n_groups = groups.len();
        for (i, s) in sockets.into_iter().enumerate() {
            groups[i % n_groups].push(s);
        }
        let threads = groups
            .into_iter()
            .map(|group| {
                let (stop, answered) = (Arc::clone(stop), Arc::clone(&answered));
                std::thread::Builder::new()
                    .name("dns-responder".into())
                    .spawn(move || serve(&group, &stop, &answered))
                    .context("spawning a responder")
            })
            .collect::<Result<_>>()?;
        Ok(Responders { threads, answered })
    }
}

fn serve(sockets: &[UdpSocket], stop: &AtomicBool, answered: &AtomicU64) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let mut idle = true;
        for s in sockets {
            while let Ok((n, peer)) = s.recv_from(&mut buf) {
                idle = false;
                if let Some(r) = answer(&buf[..n])
                    && s.send_to(&r, peer).is_ok()
                {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// What the flood sent and got back.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct FloodCounts {
    pub queries: u64,
    pub answers: u64,
    pub send_errors: u64,
}

/// Sends `rate` queries per second over `servers` servers from `sockets` client sockets until
/// `stop`; `sent` and `answers` are updated as it goes. Call from a thread inside the namespace.
pub fn flood(
    rate: u64,
    servers: usize,
    sockets: usize,
    stop: &AtomicBool,
    sent: &AtomicU64,
    answers: &Arc<AtomicU64>,
) -> Result<FloodCounts> {
    let clients: Vec<UdpSocket> = (0..sockets.max(1))
        .map(|_| {
            let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a DNS client socket")?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect::<Result<_>>()?;
    let mut rng = Rng::new(u64::from(std::process::id()) << 32 | 0x5eed);
    let started = Instant::now();
    let mut counts = FloodCounts::default();
    let mut buf = [0u8; 1500];
    let slot = Duration::from_millis(10);
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while counts.queries < due {
            let r = rng.next_u64();
            let name = format!(
                "{}{:015x}.{:08x}.soak.test",
                if r & 1 == 0 { 'a' } else { 'n' },
                r >> 4,
                rng.next_u64() as u32
            );
            let qtype = if r & 2 == 0 { 1 } else { 28 };
            let i = counts.queries as usize;
            let q = query(r as u16, &name, qtype);
            match clients[i % clients.len()].send_to(&q, server(i % servers)) {
                Ok(_) => counts.queries += 1,
                Err(_) => {
                    counts.send_errors += 1;
                    counts.queries += 1;
                }
            }
        }
        sent.store(counts.queries, Ordering::Relaxed);
        for c in &clients {
            while c.recv_from(&mut buf).is_ok() {
                counts.answers += 1;
            }
        }
        answers.store(counts.answers, Ordering::Relaxed);
        std::thread::sleep(slot);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_a_with_a_record_and_others_with_nxdomain() {
        let r = answer(&query(7, "abc.soak.test", 1)).expect("answer");
        assert_eq!((r[0..2].to_vec(), r[2] & 0x80, r[3] & 0x0f, r[7]), (vec![0, 7], 0x80, 0, 1));
        let r = answer(&query(8, "nbc.soak.test", 1)).expect("answer");
        assert_eq!((r[3] & 0x0f, r[7]), (3, 0));
        let r = answer(&query(9, "abc.soak.test", 28)).expect("answer");
        assert_eq!(r[3] & 0x0f, 3);
        assert!(answer(&r).is_none(), "a response is not answered");
    }
}
