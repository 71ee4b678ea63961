//! Who sent on a UDP socket, where the UDP programs cannot say: the `UDP_OWNERS` map (socket
//! cookie → pid and comm), filled at the end of `udp_sendmsg` by [`hooks::UDP_SENDERS`]
//! and joined to UDP flow records here by cookie.
//!
//! Limits: a socket that only received has no sender; the kernel map is an LRU of 65,536
//! sockets, so on a host with more live UDP sockets the oldest lose their sender. Lookups are
//! cached (at most [`MAX_CACHED`] cookies) and made only for flows that sent something.
//!
//! [`hooks::UDP_SENDERS`]: super::hooks::UDP_SENDERS

use std::collections::HashMap;
use std::sync::Arc;

use aya::maps::{HashMap as BpfHashMap, MapData};
use eddy_ebpf::Owner;

use super::convert;
use crate::flow::{FlowRecord, Protocol};

const MAX_CACHED: usize = 65_536;

/// The kernel map and a cache of what it said.
pub struct Senders {
    map: BpfHashMap<MapData, u64, Owner>,
    cache: HashMap<u64, (u32, Option<Arc<str>>)>,
}

impl Senders {
    pub fn new(map: BpfHashMap<MapData, u64, Owner>) -> Self {
        Senders { map, cache: HashMap::new() }
    }

    /// Names the process of UDP records that sent datagrams and have no pid yet.
    pub fn fill<'a>(&mut self, records: impl Iterator<Item = &'a mut FlowRecord>) {
        for r in records {
            if r.protocol != Protocol::Udp || r.pid.is_some() || r.packets_sent == 0 {
                continue;
            }
            if r.cookie == 0 {
                continue;
            }
            if let Some((pid, comm)) = self.lookup(r.cookie) {
                r.pid = Some(pid);
                r.comm = comm;
            }
        }
    }

    fn lookup(&mut self, cookie: u64) -> Option<(u32, Option<Arc<str>>)> {
        if let Some(hit) = self.cache.get(&cookie) {
            return Some(hit.clone());
        }
        let owner = self.map.get(&cookie, 0).ok()?;
        if owner.pid == 0 {
            return None;
        }
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        let found = (owner.pid, convert::comm(&owner.comm).map(Arc::from));
        self.cache.insert(cookie, found.clone());
        Some(found)
    }
}
