//! The known connection: one TCP connection whose byte counts are known exactly, kept busy for
//! the whole soak, then checked in `/flows` and in the JSON lines (both ends).
//!
//! What: a client on [`CLIENT`] talks to a server on [`SERVER`] (inside the soak's namespace):
//! every [`ROUND_EVERY`] the client sends [`SENT_PER_ROUND`] bytes and the server answers
//! [`RECEIVED_PER_ROUND`]; [`Known::stop`] ends the rounds and returns the totals with both
//! sockets still open, [`KnownConn::close`] closes them (client first).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use crate::flow::FlowRecord;

pub const SERVER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 77, 2)), 7777);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 77, 1);
pub const SENT_PER_ROUND: usize = 12_345;
pub const RECEIVED_PER_ROUND: usize = 6_789;
pub const ROUND_EVERY: Duration = Duration::from_millis(500);

/// The connection after its rounds: addresses, totals and both open sockets.
#[derive(Debug)]
pub struct KnownConn {
    pub client: SocketAddr,
    pub rounds: u64,
    pub sent: u64,
    pub received: u64,
    streams: Option<(TcpStream, TcpStream)>,
}

pub struct Known {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<KnownConn>>,
}

impl Known {
    /// Starts the rounds on a thread of `ns`.
    pub fn start(ns: &crate::NetNs) -> Known {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = ns.spawn(move || rounds(&flag));
        Known { stop, handle }
    }

    /// Ends the rounds (the current one completes) and returns the connection.
    pub fn stop(self) -> Result<KnownConn> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().map_err(|_| anyhow!("the known connection's thread panicked"))?
    }
}

fn rounds(stop: &AtomicBool) -> Result<KnownConn> {
    let listener = TcpListener::bind(SERVER).with_context(|| format!("binding {SERVER}"))?;
    let (_, _, connected) = crate::sock::tcp_connect_bound(SocketAddr::from((CLIENT, 0)), SERVER, None);
    let mut client = connected.with_context(|| format!("connecting {CLIENT} to {SERVER}"))?;
    let (mut server, _) = listener.accept().context("accept")?;
    for s in [&client, &server] {
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_nodelay(true)?;
    }
    let client_addr = client.local_addr()?;
    let (out, back) = (vec![b'k'; SENT_PER_ROUND], vec![b'K'; RECEIVED_PER_ROUND]);
    let mut buf = vec![0u8; SENT_PER_ROUND.max(RECEIVED_PER_ROUND)];
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        client.write_all(&out).context("client write")?;
        server.read_exact(&mut buf[..SENT_PER_ROUND]).context("server read")?;
        server.write_all(&back).context("server write")?;
        client.read_exact(&mut buf[..RECEIVED_PER_ROUND]).context("client read")?;
        n += 1;
        std::thread::sleep(ROUND_EVERY);
    }
    Ok(KnownConn {
        client: client_addr,
        rounds: n,
        sent: n * SENT_PER_ROUND as u64,
        received: n * RECEIVED_PER_ROUND as u64,
        streams: Some((client, server)),
    })
}

impl KnownConn {
    /// Closes both ends: the client first, the server after reading its EOF.
    pub fn close(&mut self) -> Result<()> {
        if let Some((client, mut server)) = self.streams.take() {
            client.shutdown(std::net::Shutdown::Write).context("client shutdown")?;
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).context("server reading EOF")?;
            drop(server);
            let mut rest = Vec::new();
            let mut client = client;
            let _ = client.read_to_end(&mut rest);
        }
        Ok(())
    }

    /// Checks the records of both ends in `records` (oldest first: the last record of each end
    /// counts): `Ok(description)` when both have the exact totals.
    pub fn check(&self, records: &[FlowRecord]) -> Result<String, String> {
        let mut lines = Vec::new();
        let mut ok = true;
        for (end, local, remote, sent, received) in [
            ("client", self.client, SERVER, self.sent, self.received),
            ("server", SERVER, self.client, self.received, self.sent),
        ] {
            match records.iter().rev().find(|r| r.is("tcp", local, remote)) {
                Some(r) if (r.bytes_sent, r.bytes_received) == (sent, received) => {
                    lines.push(format!("{end} sent={sent} received={received} exact"))
                }
                Some(r) => {
                    ok = false;
                    lines.push(format!(
                        "{end} sent={} received={} (expected {sent}/{received})",
                        r.bytes_sent, r.bytes_received
                    ));
                }
                None => {
                    ok = false;
                    lines.push(format!("{end}: no record {local} -> {remote}"));
                }
            }
        }
        if ok { Ok(lines.join("; ")) } else { Err(lines.join("; ")) }
    }
}
