//! Intra-host remote identity without any API call: when both ends of a connection
//! are on this host, the remote end's labels are the local labels of the peer
//! flow (the same 4-tuple seen from the other side). Holds the (shared) local labels of
//! the flows seen in the last one to two `ttl`s, in two generations: every `ttl`, or when
//! the current one reaches `capacity`, it becomes the previous one and the previous one is
//! forgotten. Open flows are seen on every scan, so their labels stay; closed ones are
//! forgotten after at most two `ttl`s.
//!
//! Limits: translated connections (bridge-mode DNAT, masquerade) match their peer only
//! through conntrack's translation.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::flow::EcsLabels;
use crate::flow::{FlowRecord, Protocol, Scope};

type Key = (Protocol, SocketAddr, SocketAddr);

/// Local labels by (protocol, local, remote).
#[derive(Debug)]
pub struct Peers {
    current: HashMap<Key, Arc<EcsLabels>>,
    previous: HashMap<Key, Arc<EcsLabels>>,
    /// When the current generation began (set by the first link).
    since: Option<Instant>,
    ttl: Duration,
    capacity: usize,
    /// Labels forgotten before their `ttl` to stay within `capacity`, in all.
    evicted: u64,
}

/// The remote end as it really is: behind a NAT on this host, its translated address.
fn effective_remote(r: &FlowRecord) -> std::net::SocketAddr {
    r.translation.map_or_else(|| r.remote.socket_addr(), |t| t.socket_addr())
}

impl Peers {
    /// At most `capacity` labels per generation (so 2 × `capacity` in all); a generation
    /// lasts `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Peers {
            current: HashMap::new(),
            previous: HashMap::new(),
            since: None,
            ttl,
            capacity: capacity.max(1),
            evicted: 0,
        }
    }

    /// Labels forgotten early to stay within the capacity, in all: a peer that closes after
    /// its label was forgotten keeps an unlabelled remote end.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    fn rotate(&mut self, now: Instant, early: bool) {
        if early {
            self.evicted += self.previous.keys().filter(|k| !self.current.contains_key(*k)).count() as u64;
        }
        self.previous = std::mem::take(&mut self.current);
        self.since = Some(now);
    }

    /// Remembers the local labels of `records`, then sets `remote.ecs` on each record
    /// whose peer is known.
    pub fn link(&mut self, records: &mut [&mut FlowRecord], now: Instant) {
        let age = now.duration_since(*self.since.get_or_insert(now));
        if age >= 2 * self.ttl {
            self.previous.clear();
            self.current.clear();
            self.since = Some(now);
        } else if age >= self.ttl {
            self.rotate(now, false);
        }
        for r in records.iter() {
            if let Some(l) = &r.local.ecs {
                let key = (r.protocol, r.local.socket_addr(), effective_remote(r));
                if self.current.len() >= self.capacity && !self.current.contains_key(&key) {
                    self.rotate(now, true);
                }
                // The same socket may be seen before its process is known: keep the better labels.
                let chosen = self.current.get(&key).map_or(l, |had| EcsLabels::better(l, had)).clone();
                self.current.insert(key, chosen);
            }
        }
        for r in records.iter_mut() {
            let peer = (r.protocol, effective_remote(r), r.local.socket_addr());
            let best = match (self.current.get(&peer), self.previous.get(&peer)) {
                (Some(c), Some(p)) => Some(EcsLabels::better(c, p)),
                (c, p) => c.or(p),
            };
            if let Some(l) = best {
                r.remote.ecs = Some(l.clone());
                r.scope = Some(Scope::SameHost);
            }
        }
    }

    /// Labels held (both generations).
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Endpoint;

    fn rec(local: u16, remote: u16, who: &str) -> FlowRecord {
        let mut r = FlowRecord::test(Protocol::Tcp, u64::from(local), false);
        r.local = Endpoint::new("10.0.0.1".parse().expect("ip"), local);
        r.remote = Endpoint::new("10.0.0.1".parse().expect("ip"), remote);
        r.local.ecs = Some(Arc::new(EcsLabels { container_name: Some(who.into()), ..Default::default() }));
        r
    }

    fn remote_of(r: &FlowRecord) -> Option<&str> {
        r.remote.ecs.as_ref().and_then(|l| l.container_name.as_deref())
    }

    #[test]
    fn both_ends_get_each_others_labels_and_memory_is_bounded() {
        let t0 = Instant::now();
        let mut p = Peers::new(2, Duration::from_secs(60));
        let mut a = [rec(40000, 80, "client"), rec(80, 40000, "server")];
        p.link(&mut a.iter_mut().collect::<Vec<_>>(), t0);
        assert_eq!(remote_of(&a[0]), Some("server"));
        assert_eq!(remote_of(&a[1]), Some("client"));
        // Two generations of 2: the first pair is forgotten (early, counted) by the third.
        for (i, who) in ["x", "y"].iter().enumerate() {
            let port = 41000 + 10 * i as u16;
            let mut later = [rec(port, 81, who), rec(port + 1, 82, who)];
            p.link(&mut later.iter_mut().collect::<Vec<_>>(), t0);
        }
        assert_eq!((p.len(), p.evicted()), (4, 2), "bounded");
        let mut lone = [rec(40000, 80, "client")];
        lone[0].remote.ecs = None;
        p.link(&mut lone.iter_mut().collect::<Vec<_>>(), t0);
        assert_eq!(remote_of(&lone[0]), None, "the server's labels were forgotten");
    }

    #[test]
    fn labels_of_flows_not_seen_for_two_ttls_are_forgotten() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(5);
        let mut p = Peers::new(100, ttl);
        let mut server = [rec(80, 40000, "server")];
        p.link(&mut server.iter_mut().collect::<Vec<_>>(), t0);
        // Seen again within a ttl: kept across a rotation.
        let mut client = [rec(40000, 80, "client")];
        p.link(&mut client.iter_mut().collect::<Vec<_>>(), t0 + ttl);
        assert_eq!(remote_of(&client[0]), Some("server"));
        // The server not seen since t0, the client since t0 + ttl: both forgotten by t0 + 3 ttl.
        let mut client = [rec(40000, 80, "client")];
        client[0].local.ecs = None;
        p.link(&mut client.iter_mut().collect::<Vec<_>>(), t0 + 3 * ttl);
        assert_eq!(remote_of(&client[0]), None, "not seen since t0: forgotten");
        assert_eq!(p.evicted(), 0, "expiry is not eviction");
    }

    /// Through a NAT on this host: the ends meet on the translated address.
    #[test]
    fn nat_translated_ends_are_linked() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
        let end = |l: (&str, u16), r: (&str, u16), who: &str, t: Option<(&str, u16)>| {
            let mut x = rec(l.1, r.1, who);
            x.local = Endpoint::new(ip(l.0), l.1);
            x.local.ecs =
                Some(Arc::new(EcsLabels { container_name: Some(who.into()), ..Default::default() }));
            x.remote = Endpoint::new(ip(r.0), r.1);
            x.translation = t.map(|(a, p)| crate::flow::Translation { addr: ip(a), port: p });
            x
        };
        let mut p = Peers::new(16, Duration::from_secs(60));
        // DNAT: the peer dialled the host port 10.0.0.1:8080, which is the container's 172.17.0.2:80.
        // MASQUERADE: the container 172.17.0.2:50000 reached the peer's 10.0.0.2:9000 as 10.0.0.1:61000.
        let mut v = [
            end(("10.0.0.2", 40000), ("10.0.0.1", 8080), "peer", Some(("172.17.0.2", 80))),
            end(("172.17.0.2", 80), ("10.0.0.2", 40000), "web", None),
            end(("10.0.0.2", 9000), ("10.0.0.1", 61000), "peer-server", Some(("172.17.0.2", 50000))),
            end(("172.17.0.2", 50000), ("10.0.0.2", 9000), "web-client", None),
        ];
        p.link(&mut v.iter_mut().collect::<Vec<_>>(), Instant::now());
        let remote = |r: &FlowRecord| r.remote.ecs.as_ref().and_then(|l| l.container_name.clone());
        let got: Vec<Option<String>> = v.iter().map(remote).collect();
        let want = ["web", "peer", "web-client", "peer-server"].map(|s| Some(s.to_string()));
        assert_eq!(got, want);
    }
}
