//! `cgroup_scope`: count only the sockets of one cgroup v2 subtree (e.g. the ECS agent's task
//! cgroups, leaving out the host's own daemons; or one "instance" when several agents share a
//! kernel, as the cluster-map test does).
//!
//! How: a cgroup v2 id is the inode number of its directory, so a walk of the subtree under the
//! scope directory gives the ids inside it. Flows and DNS packets are classified by the cgroup
//! id the kernel recorded for their socket: an id met for the first time wakes one walk (a
//! container started since the last walk is found by it); an id the walk did not find is
//! outside and is remembered as such (cgroup ids are never reused), so it costs no further walk.
//! Everything runs on the collector thread; walks are bounded ([`MIN_WALK_GAP`], [`MAX_IDS`]).
//!
//! An id met between walks is not guessed: its closed flows and DNS packets wait (in memory,
//! at most [`MAX_WAITING`] of each) and its open flows sit out the scan, until the next walk
//! classifies them, at most [`MIN_WALK_GAP`] later (at once when the wait is full or the agent
//! stops). Letting them through would count another instance's sockets for a moment, and
//! leaving an open flow out for a moment is harmless: the next scan reads it again.
//!
//! Limits: a socket without a recorded cgroup (0 from the kernel) is outside; a socket created
//! in a cgroup that is then removed and re-created under the scope keeps its old id (outside).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::collector::Batch;
use crate::dns::DnsPacket;

/// Shortest time between two walks (ids met in between wait in `pending`: their records are
/// kept, to be classified by the next walk, never dropped unseen).
pub const MIN_WALK_GAP: Duration = Duration::from_millis(100);
/// Most ids remembered inside, and most remembered outside; beyond, ids are forgotten (counted
/// in `ids_forgotten`) and a later sight walks again.
pub const MAX_IDS: usize = 65_536;
/// Most directories one walk reads (a larger subtree is cut, counted in `walks_cut`).
pub const MAX_DIRS: usize = 100_000;
/// Closed flows, and DNS packets, that wait for a walk at most; one more walks at once.
pub const MAX_WAITING: usize = 16_384;

/// `/status` → `cgroup_scope`.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ScopeStatus {
    pub path: PathBuf,
    /// The directory existed at the last walk.
    pub exists: bool,
    /// cgroups found under the scope by the last walk.
    pub cgroups_inside: u64,
    pub walks: u64,
    pub walks_cut: u64,
    /// Flow records (closed and open, per poll) and DNS packets left out: outside the scope.
    pub flows_outside: u64,
    pub dns_outside: u64,
    /// Of those, the ones without a cgroup id.
    pub without_cgroup: u64,
    pub ids_forgotten: u64,
    /// Closed flows and DNS packets of ids no walk has classified yet, waiting for the next one.
    pub waiting: u64,
}

/// What the collector thread shares: the configured directory and the counters.
#[derive(Debug)]
pub struct ScopeShared {
    pub status: Mutex<ScopeStatus>,
}

impl ScopeShared {
    pub fn new(path: PathBuf) -> ScopeShared {
        ScopeShared { status: Mutex::new(ScopeStatus { path, ..ScopeStatus::default() }) }
    }

    pub fn status(&self) -> ScopeStatus {
        self.status.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The collector thread's classifier.
pub struct CgroupScope {
    dir: PathBuf,
    inside: HashSet<u64>,
    outside: HashSet<u64>,
    last_walk: Option<Instant>,
    status: ScopeStatus,
    /// Closed flows of ids not classified yet (see the module's documentation).
    waiting: Vec<crate::collector::Observed>,
    waiting_dns: Vec<DnsPacket>,
}

/// Where an id stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Inside,
    Outside,
    /// Met since the last walk.
    Unclassified,
}

/// What a walk of `dir` found: the ids, whether `dir` exists, whether the walk was cut.
fn walk(dir: &Path) -> (HashSet<u64>, bool, bool) {
    let mut ids = HashSet::new();
    let Ok(meta) = std::fs::metadata(dir) else { return (ids, false, false) };
    ids.insert(meta.ino());
    let mut stack = vec![dir.to_path_buf()];
    let mut dirs = 1usize;
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if dirs >= MAX_DIRS {
                return (ids, true, true);
            }
            dirs += 1;
            if let Ok(m) = e.metadata() {
                ids.insert(m.ino());
            }
            stack.push(e.path());
        }
    }
    (ids, true, false)
}

impl CgroupScope {
    pub fn new(dir: PathBuf) -> CgroupScope {
        let status = ScopeStatus { path: dir.clone(), ..ScopeStatus::default() };
        let mut s = CgroupScope {
            dir,
            inside: HashSet::new(),
            outside: HashSet::new(),
            last_walk: None,
            status,
            waiting: Vec::new(),
            waiting_dns: Vec::new(),
        };
        s.walk(Instant::now());
        s
    }

    fn walk(&mut self, now: Instant) {
        let (ids, exists, cut) = walk(&self.dir);
        if exists && !self.status.exists && self.status.walks > 0 {
            tracing::info!(path = %self.dir.display(), "cgroup_scope directory appeared");
        }
        if !exists && (self.status.exists || self.status.walks == 0) {
            tracing::warn!(path = %self.dir.display(), "cgroup_scope directory does not exist: no socket is counted until it does");
        }
        self.status.walks += 1;
        self.status.walks_cut += u64::from(cut);
        self.status.exists = exists;
        self.status.cgroups_inside = ids.len() as u64;
        if ids.len() > MAX_IDS {
            self.status.ids_forgotten += (ids.len() - MAX_IDS) as u64;
        }
        self.inside = ids.into_iter().take(MAX_IDS).collect();
        self.last_walk = Some(now);
    }

    fn may_walk(&self, now: Instant) -> bool {
        self.last_walk.is_none_or(|t| now.duration_since(t) >= MIN_WALK_GAP)
    }

    /// Classifies every id of `ids` not known yet: one walk for all of them (when allowed, or
    /// `now_anyway`); those the walk did not find are outside.
    fn learn(&mut self, ids: impl Iterator<Item = u64>, now: Instant, now_anyway: bool) {
        let unknown: Vec<u64> =
            ids.filter(|id| !self.inside.contains(id) && !self.outside.contains(id)).collect();
        if unknown.is_empty() || !(now_anyway || self.may_walk(now)) {
            return;
        }
        self.walk(now);
        for id in unknown {
            if !self.inside.contains(&id) {
                if self.outside.len() >= MAX_IDS {
                    self.status.ids_forgotten += self.outside.len() as u64;
                    self.outside.clear();
                }
                self.outside.insert(id);
            }
        }
    }

    /// Where `id` stands (a record without an id is outside).
    fn class(&mut self, id: Option<u64>) -> Class {
        match id {
            None => {
                self.status.without_cgroup += 1;
                Class::Outside
            }
            Some(id) if self.inside.contains(&id) => Class::Inside,
            Some(id) if self.outside.contains(&id) => Class::Outside,
            Some(_) => Class::Unclassified,
        }
    }

    /// Drops the batch's records outside the scope. Closed records of ids no walk has
    /// classified yet wait for the next walk (they come out, in order, ahead of a later
    /// batch's); open ones sit out this scan. `flush` (the last poll) walks for them now.
    pub fn retain_batch(&mut self, batch: &mut Batch, now: Instant, flush: bool) {
        let mut closed = std::mem::take(&mut self.waiting);
        closed.append(&mut batch.closed);
        let ids = closed.iter().chain(batch.live.iter().flatten()).filter_map(|o| o.record.cgroup_id);
        self.learn(ids, now, flush || closed.len() >= MAX_WAITING);
        let mut outside;
        (batch.closed, self.waiting, outside) = self.sort_out(closed, |o| o.record.cgroup_id);
        if let Some(live) = batch.live.as_mut() {
            live.retain(|o| match self.class(o.record.cgroup_id) {
                Class::Inside => true,
                Class::Outside => {
                    outside += 1;
                    false
                }
                Class::Unclassified => false,
            });
        }
        self.status.flows_outside += outside;
        self.status.waiting = (self.waiting.len() + self.waiting_dns.len()) as u64;
    }

    /// Drops the DNS packets outside the scope; those of ids no walk has classified yet wait
    /// for the next walk, like closed flows.
    pub fn retain_dns(&mut self, packets: &mut Vec<DnsPacket>, now: Instant, flush: bool) {
        let mut all = std::mem::take(&mut self.waiting_dns);
        all.append(packets);
        self.learn(all.iter().filter_map(|p| p.cgroup_id), now, flush || all.len() >= MAX_WAITING);
        let outside;
        (*packets, self.waiting_dns, outside) = self.sort_out(all, |p| p.cgroup_id);
        self.status.dns_outside += outside;
        self.status.waiting = (self.waiting.len() + self.waiting_dns.len()) as u64;
    }

    /// `items` (in order) as those inside, those waiting for a walk, and how many are outside.
    fn sort_out<T>(&mut self, items: Vec<T>, id: impl Fn(&T) -> Option<u64>) -> (Vec<T>, Vec<T>, u64) {
        let (mut inside, mut waiting, mut outside) = (Vec::with_capacity(items.len()), Vec::new(), 0);
        for item in items {
            match self.class(id(&item)) {
                Class::Inside => inside.push(item),
                Class::Outside => outside += 1,
                Class::Unclassified => waiting.push(item),
            }
        }
        (inside, waiting, outside)
    }

    /// Publishes the counters.
    pub fn publish(&self, shared: &ScopeShared) {
        *shared.status.lock().unwrap_or_else(PoisonError::into_inner) = self.status.clone();
    }
}

#[cfg(test)]
mod tests;
