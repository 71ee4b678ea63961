//! The current interval's deltas per series, found without building a [`SeriesKey`] per record.
//!
//! A [`SeriesKey`] is 19 strings: building one, hashing it and comparing it for every record
//! cost more than everything else the collector does per closed connection. But everything a
//! key is made of is in a few scalars and shared label sets of the record: an [`Identity`]
//! (protocol, family, direction, server port, the addresses the key can use, scope, and the
//! ECS and AWS labels of both ends by pointer). Equal identities make equal keys, so the key is
//! built once per identity per interval; later records of the identity find their slot by the
//! identity alone.
//!
//! The identity holds its label `Arc`s, so a pointer cannot be reused by other labels while the
//! identity is remembered. Bounded: at most `ids_max` identities per interval; beyond, records
//! build their key as before (slower, same result).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use super::SeriesValues;
use super::key::{LabelGroups, SeriesKey, ecs_named, remote_named};
use crate::flow::{Direction, EcsLabels, Family, FlowRecord, Protocol, RemoteAws, Scope};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The server's port of a record: the remote port of outgoing flows, the local port of
/// incoming ones, the lower one when the direction is unknown.
pub fn server_port(r: &FlowRecord) -> u16 {
    match r.direction {
        Direction::Outgoing => r.remote.port,
        Direction::Incoming => r.local.port,
        Direction::Unknown => r.local.port.min(r.remote.port),
    }
}

/// Everything [`SeriesKey::with`] reads of a record, compared by value and label pointer.
#[derive(Clone, Debug)]
pub struct Identity {
    protocol: Protocol,
    family: Family,
    direction: Direction,
    server_port: u16,
    /// Only when the key can carry it (`addresses`, or an unnamed end with `unnamed_addresses`).
    local_addr: Option<IpAddr>,
    remote_addr: Option<IpAddr>,
    scope: Option<Scope>,
    local_ecs: Option<Arc<EcsLabels>>,
    remote_ecs: Option<Arc<EcsLabels>>,
    remote_aws: Option<Arc<RemoteAws>>,
}

impl Identity {
    /// The identity of `r` under `groups`.
    pub fn of(r: &FlowRecord, groups: LabelGroups) -> Identity {
        let unnamed = groups.unnamed_addresses;
        let local_ecs = r.local.ecs.as_deref();
        Identity {
            protocol: r.protocol,
            family: r.family,
            direction: r.direction,
            server_port: server_port(r),
            local_addr: (groups.addresses || (unnamed && !ecs_named(local_ecs))).then_some(r.local.addr),
            remote_addr: (groups.addresses || (unnamed && !remote_named(r))).then_some(r.remote.addr),
            scope: r.scope,
            local_ecs: r.local.ecs.clone(),
            remote_ecs: r.remote.ecs.clone(),
            remote_aws: r.remote.aws.clone(),
        }
    }
}

fn ptr<T>(a: &Option<Arc<T>>) -> usize {
    a.as_ref().map_or(0, |a| Arc::as_ptr(a) as *const () as usize)
}

impl PartialEq for Identity {
    fn eq(&self, o: &Self) -> bool {
        self.protocol == o.protocol
            && self.family == o.family
            && self.direction == o.direction
            && self.server_port == o.server_port
            && self.local_addr == o.local_addr
            && self.remote_addr == o.remote_addr
            && self.scope == o.scope
            && ptr(&self.local_ecs) == ptr(&o.local_ecs)
            && ptr(&self.remote_ecs) == ptr(&o.remote_ecs)
            && ptr(&self.remote_aws) == ptr(&o.remote_aws)
    }
}

impl Eq for Identity {}

impl Hash for Identity {
    fn hash<H: Hasher>(&self, h: &mut H) {
        (self.protocol, self.family, self.direction, self.server_port).hash(h);
        (self.local_addr, self.remote_addr, self.scope).hash(h);
        (ptr(&self.local_ecs), ptr(&self.remote_ecs), ptr(&self.remote_aws)).hash(h);
    }
}

/// The interval's deltas, one slot per series key.
#[derive(Debug)]
pub struct IntervalMap {
    slots: Vec<(SeriesKey, SeriesValues)>,
    index: HashMap<SeriesKey, usize>,
    ids: FastMap<Identity, usize>,
    ids_max: usize,
}

impl IntervalMap {
    /// Remembers at most `ids_max` identities per interval.
    pub fn new(ids_max: usize) -> Self {
        IntervalMap { slots: Vec::new(), index: HashMap::new(), ids: FastMap::default(), ids_max }
    }

    /// Series keys in the interval.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn contains_key(&self, key: &SeriesKey) -> bool {
        self.index.contains_key(key)
    }

    /// Identities remembered.
    #[cfg(test)]
    pub fn ids(&self) -> usize {
        self.ids.len()
    }

    /// Adds `d` to the slot of `id`, if the identity is known: `false` when it is not.
    pub fn add_by_id(&mut self, id: &Identity, d: &SeriesValues) -> bool {
        match self.ids.get(id) {
            Some(&i) => {
                self.slots[i].1.add(d);
                true
            }
            None => false,
        }
    }

    /// Adds `d` to the slot of `key`, and remembers that `id` (if any) leads there.
    pub fn add(&mut self, key: SeriesKey, id: Option<Identity>, d: &SeriesValues) {
        let i = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                self.slots.push((key.clone(), SeriesValues::default()));
                self.index.insert(key, self.slots.len() - 1);
                self.slots.len() - 1
            }
        };
        self.slots[i].1.add(d);
        if let Some(id) = id
            && self.ids.len() < self.ids_max
        {
            self.ids.insert(id, i);
        }
    }

    /// Forgets the identities (their keys would differ now, e.g. the host's zone became known);
    /// the slots stay.
    pub fn forget_ids(&mut self) {
        self.ids = FastMap::default();
    }

    /// The interval's deltas; the map is empty again.
    pub fn take(&mut self) -> Vec<(SeriesKey, SeriesValues)> {
        self.index = HashMap::new();
        self.ids = FastMap::default();
        std::mem::take(&mut self.slots)
    }
}

#[cfg(test)]
mod tests;
