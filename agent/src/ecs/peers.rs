//! Intra-host remote identity without any API call: when both ends of a connection
//! are on this host, the remote end's labels are the local labels of the peer
//! flow (the same 4-tuple seen from the other side). Holds the local labels of
//! recently seen flows, bounded (oldest forgotten first).
//!
//! Limits: translated connections (bridge-mode DNAT, masquerade) do not match
//! their peer until conntrack is read (not done yet).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use crate::flow::EcsLabels;
use crate::flow::{FlowRecord, Protocol, Scope};

type Key = (Protocol, SocketAddr, SocketAddr);

/// Local labels by (protocol, local, remote).
#[derive(Debug)]
pub struct Peers {
    labels: HashMap<Key, Box<EcsLabels>>,
    order: VecDeque<Key>,
    capacity: usize,
    /// Labels forgotten to stay within `capacity`, in all.
    evicted: u64,
}

/// The remote end as it really is: behind a NAT on this host, its translated address.
fn effective_remote(r: &FlowRecord) -> std::net::SocketAddr {
    r.translation.map_or_else(|| r.remote.socket_addr(), |t| t.socket_addr())
}

impl Peers {
    pub fn new(capacity: usize) -> Self {
        Peers { labels: HashMap::new(), order: VecDeque::new(), capacity: capacity.max(1), evicted: 0 }
    }

    /// Labels forgotten (oldest first) to stay within the capacity, in all: a peer that
    /// closes after its label was forgotten keeps an unlabelled remote end.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Remembers the local labels of `records`, then sets `remote.ecs` on each record
    /// whose peer is known.
    pub fn link(&mut self, records: &mut [&mut FlowRecord]) {
        for r in records.iter() {
            if let Some(l) = &r.local.ecs {
                let key = (r.protocol, r.local.socket_addr(), effective_remote(r));
                if self.labels.insert(key, l.clone()).is_none() {
                    self.order.push_back(key);
                }
            }
        }
        while self.labels.len() > self.capacity {
            match self.order.pop_front() {
                Some(k) => {
                    self.evicted += u64::from(self.labels.remove(&k).is_some());
                }
                None => break,
            }
        }
        for r in records.iter_mut() {
            let peer = (r.protocol, effective_remote(r), r.local.socket_addr());
            if let Some(l) = self.labels.get(&peer) {
                r.remote.ecs = Some(l.clone());
                r.scope = Some(Scope::SameHost);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
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
        r.local.ecs = Some(Box::new(EcsLabels { container_name: Some(who.into()), ..Default::default() }));
        r
    }

    #[test]
    fn both_ends_get_each_others_labels_and_memory_is_bounded() {
        let mut p = Peers::new(2);
        let mut a = [rec(40000, 80, "client"), rec(80, 40000, "server")];
        p.link(&mut a.iter_mut().collect::<Vec<_>>());
        assert_eq!(a[0].remote.ecs.as_ref().and_then(|l| l.container_name.as_deref()), Some("server"));
        assert_eq!(a[1].remote.ecs.as_ref().and_then(|l| l.container_name.as_deref()), Some("client"));
        let mut later = [rec(40001, 81, "x"), rec(40002, 82, "y")];
        p.link(&mut later.iter_mut().collect::<Vec<_>>());
        assert_eq!(p.len(), 2, "bounded");
        let mut lone = [rec(40000, 80, "client")];
        lone[0].remote.ecs = None;
        p.link(&mut lone.iter_mut().collect::<Vec<_>>());
        assert!(lone[0].remote.ecs.is_none(), "the server's labels were forgotten");
    }

    /// Through a NAT on this host: the ends meet on the translated address.
    #[test]
    fn nat_translated_ends_are_linked() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
        let end = |l: (&str, u16), r: (&str, u16), who: &str, t: Option<(&str, u16)>| {
            let mut x = rec(l.1, r.1, who);
            x.local = Endpoint::new(ip(l.0), l.1);
            x.local.ecs =
                Some(Box::new(EcsLabels { container_name: Some(who.into()), ..Default::default() }));
            x.remote = Endpoint::new(ip(r.0), r.1);
            x.translation = t.map(|(a, p)| crate::flow::Translation { addr: ip(a), port: p });
            x
        };
        let mut p = Peers::new(16);
        // DNAT: the peer dialled the host port 10.0.0.1:8080, which is the container's 172.17.0.2:80.
        // MASQUERADE: the container 172.17.0.2:50000 reached the peer's 10.0.0.2:9000 as 10.0.0.1:61000.
        let mut v = [
            end(("10.0.0.2", 40000), ("10.0.0.1", 8080), "peer", Some(("172.17.0.2", 80))),
            end(("172.17.0.2", 80), ("10.0.0.2", 40000), "web", None),
            end(("10.0.0.2", 9000), ("10.0.0.1", 61000), "peer-server", Some(("172.17.0.2", 50000))),
            end(("172.17.0.2", 50000), ("10.0.0.2", 9000), "web-client", None),
        ];
        p.link(&mut v.iter_mut().collect::<Vec<_>>());
        let remote = |r: &FlowRecord| r.remote.ecs.as_ref().and_then(|l| l.container_name.clone());
        let got: Vec<Option<String>> = v.iter().map(remote).collect();
        let want = ["web", "peer", "web-client", "peer-server"].map(|s| Some(s.to_string()));
        assert_eq!(got, want);
    }
}
