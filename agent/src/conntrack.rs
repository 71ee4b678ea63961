//! NAT attribution through conntrack: flows whose remote end sits behind a NAT on this host
//! (a DNAT'd host port, a masqueraded container) get the remote's translated address
//! ([`crate::flow::FlowRecord::translation`]), and the intra-host peer link uses it, so the
//! remote end is named after the container behind the NAT.
//!
//! How: a background thread dumps the conntrack table over ctnetlink (`netlink-packet-netfilter`,
//! rust-netlink's decoder, over `netlink-sys`), then follows new and destroyed entries. Only
//! entries where NAT applied are kept, in a bounded map keyed by the tuple each end's socket
//! sees: the initiator's (original source → original destination) maps to where it really went
//! (the reply's source), the responder's (reply source → reply destination) to where it really
//! came from (the original source). Flows read the map without blocking.
//!
//! Limits: conntrack is per network namespace: the agent reads its own (the host's, where Docker
//! and the ECS agent put their DNAT and MASQUERADE rules) unless `conntrack_netns` names another.
//! An event burst beyond the socket's buffer (ENOBUFS) is counted and the table re-dumped.
//! Unavailable (no nf_conntrack, no CAP_NET_ADMIN): `/status.conntrack` says why, flows are
//! unaffected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use serde::Serialize;

use crate::enrich::Enricher;
use crate::flow::{FlowRecord, Protocol, Translation};

pub mod netlink;

use netlink::{Entry, Event};

/// Why conntrack cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("{op}: {source}")]
    Io { op: &'static str, source: std::io::Error },
    #[error("the kernel refused the request: {0}")]
    Kernel(std::io::Error),
    #[error("the conntrack dump ended early")]
    Truncated,
    #[error("cannot enter network namespace {path}: {reason}")]
    Netns { path: String, reason: String },
}

/// Settings (from the agent's config).
#[derive(Clone, Debug)]
pub struct ConntrackSettings {
    pub max_entries: usize,
    /// Read the conntrack table of this network namespace (`/proc/<pid>/ns/net`, `/run/netns/<n>`).
    pub netns: Option<PathBuf>,
}

/// `/status` → `conntrack`.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ConntrackStatus {
    /// `starting`, `on` or `unavailable`.
    pub state: &'static str,
    /// Why it is unavailable.
    pub reason: Option<String>,
    /// NAT'd connections known now.
    pub entries: u64,
    pub capacity: u64,
    /// New and destroyed entries received.
    pub events: u64,
    /// NAT'd connections not kept: the map was full.
    pub dropped_full: u64,
    /// Event bursts the socket lost (ENOBUFS); each is followed by a re-dump.
    pub overruns: u64,
    pub dumps: u64,
    /// Messages that could not be decoded.
    pub undecodable: u64,
    /// Flows that got a translation.
    pub translated_flows: u64,
}

type Key = (u8, SocketAddr, SocketAddr);
/// Looked up for every flow record: a fast hash (seeded per process).
type Map = HashMap<Key, SocketAddr, foldhash::fast::RandomState>;

/// The shared state: the map flows read, and the counters.
#[derive(Debug)]
pub struct Conntrack {
    map: RwLock<Map>,
    status: Mutex<ConntrackStatus>,
    max_entries: usize,
}

impl Conntrack {
    pub fn new(max_entries: usize) -> Self {
        Conntrack {
            map: RwLock::new(Map::default()),
            status: Mutex::new(ConntrackStatus {
                state: "starting",
                capacity: max_entries as u64,
                ..Default::default()
            }),
            max_entries,
        }
    }

    fn status_mut(&self) -> std::sync::MutexGuard<'_, ConntrackStatus> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The two keys of a NAT'd entry, each with the real address of the other end.
    fn keys(e: &Entry) -> [(Key, SocketAddr, bool); 2] {
        [
            ((e.protocol, e.orig_src, e.orig_dst), e.reply_src, e.reply_src != e.orig_dst),
            ((e.protocol, e.reply_src, e.reply_dst), e.orig_src, e.reply_dst != e.orig_src),
        ]
    }

    /// Adds the keys of a NAT'd entry to `map`; returns how many did not fit.
    fn insert(&self, map: &mut Map, e: &Entry) -> u64 {
        let mut dropped = 0;
        for (k, real, nat) in Self::keys(e) {
            if !nat || map.contains_key(&k) {
                continue;
            }
            if map.len() >= self.max_entries {
                dropped += 1;
                continue;
            }
            map.insert(k, real);
        }
        dropped
    }

    /// Applies one event.
    pub fn apply(&self, ev: &Event) {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        let mut dropped = 0;
        match ev {
            Event::New(e) if e.translated() => dropped = self.insert(&mut map, e),
            Event::Destroy(e) => {
                for (k, _, _) in Self::keys(e) {
                    map.remove(&k);
                }
            }
            Event::New(_) => {}
        }
        let n = map.len() as u64;
        drop(map);
        let mut s = self.status_mut();
        s.events += 1;
        s.dropped_full += dropped;
        s.entries = n;
    }

    /// Replaces the map with a dump, at once: lookups see the old map or the new one,
    /// never a partly filled one.
    pub fn replace(&self, entries: &[Entry]) {
        let mut fresh =
            Map::with_capacity_and_hasher(entries.len().min(self.max_entries), Default::default());
        let dropped: u64 =
            entries.iter().filter(|e| e.translated()).map(|e| self.insert(&mut fresh, e)).sum();
        let n = fresh.len() as u64;
        *self.map.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        let mut s = self.status_mut();
        s.dumps += 1;
        s.dropped_full += dropped;
        s.entries = n;
    }

    /// The real address of the remote end of a socket (local, remote), when a NAT applied.
    pub fn lookup(&self, protocol: Protocol, local: SocketAddr, remote: SocketAddr) -> Option<SocketAddr> {
        let p = match protocol {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        };
        self.map.read().unwrap_or_else(PoisonError::into_inner).get(&(p, local, remote)).copied()
    }

    pub fn status(&self) -> ConntrackStatus {
        self.status_mut().clone()
    }

    fn set_state(&self, state: &'static str, reason: Option<String>) {
        let mut s = self.status_mut();
        s.state = state;
        s.reason = reason;
    }
}

/// Sets `translation` on flows (an [`Enricher`], run before the peer link).
#[derive(Debug)]
pub struct ConntrackEnricher(pub Arc<Conntrack>);

impl Enricher for ConntrackEnricher {
    fn enrich(&self, r: &mut FlowRecord) {
        if r.translation.is_some() {
            return;
        }
        if let Some(real) = self.0.lookup(r.protocol, r.local.socket_addr(), r.remote.socket_addr()) {
            r.translation = Some(Translation { addr: real.ip(), port: real.port() });
            self.0.status_mut().translated_flows += 1;
        }
    }

    fn health(&self) -> crate::enrich::ProviderHealth {
        crate::enrich::ProviderHealth::new(self.0.status())
    }
}

/// How long to wait before trying again when conntrack is unavailable.
const RETRY: Duration = Duration::from_secs(30);

/// Starts the reader thread.
pub fn start(settings: ConntrackSettings) -> Result<Arc<Conntrack>, std::io::Error> {
    let ct = Arc::new(Conntrack::new(settings.max_entries));
    let c = ct.clone();
    std::thread::Builder::new().name("conntrack".into()).spawn(move || {
        if let Some(path) = &settings.netns
            && let Err(e) = enter(path)
        {
            tracing::warn!(error = %e, "conntrack unavailable; flows are not translated");
            c.set_state("unavailable", Some(e.to_string()));
            return;
        }
        loop {
            if let Err(e) = follow(&c) {
                tracing::warn!(error = %e, "conntrack unavailable; flows are not translated (retrying in 30s)");
                c.set_state("unavailable", Some(e.to_string()));
            }
            std::thread::sleep(RETRY);
        }
    })?;
    Ok(ct)
}

/// Moves this thread into another network namespace.
fn enter(path: &std::path::Path) -> Result<(), ConntrackError> {
    let bad = |reason: String| ConntrackError::Netns { path: path.display().to_string(), reason };
    let f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| bad(e.to_string()))
}

/// Subscribes, dumps, then applies events until an error (ENOBUFS: counted, re-dumped).
fn follow(c: &Conntrack) -> Result<(), ConntrackError> {
    let events = netlink::subscribe()?;
    let mut bad = 0;
    let entries = netlink::dump(&mut bad)?;
    c.replace(&entries);
    c.status_mut().undecodable += bad;
    c.set_state("on", None);
    tracing::info!(
        nat_entries = c.status().entries,
        "conntrack on: NAT'd flows get their translated address"
    );
    let mut rx: Vec<u8> = Vec::with_capacity(256 << 10);
    loop {
        rx.clear();
        match events.recv(&mut rx, 0) {
            Ok(_) => {
                let mut bad = 0;
                netlink::read_events(&rx, &mut |e| c.apply(&e), &mut bad);
                if bad > 0 {
                    c.status_mut().undecodable += bad;
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                c.status_mut().overruns += 1;
                let mut bad = 0;
                let entries = netlink::dump(&mut bad)?;
                c.replace(&entries);
            }
            Err(source) => return Err(ConntrackError::Io { op: "recv events", source }),
        }
    }
}

impl crate::enrich::Health for ConntrackStatus {
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
