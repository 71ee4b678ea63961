//! Local-side attribution: socket cgroup id → cgroup directory → container →
//! ECS task and container, from two background-refreshed, immutable snapshots
//! (the cgroup2 tree and the ECS agent's task list). [`LocalResolver::labels`]
//! only reads them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cgroup::{CgroupOwner, parse};
use super::introspection::{self, Snapshot};
use super::procs::{ProcIndex, own_netns};
use crate::enrich::Enricher;
use crate::flow::EcsLabels;
use crate::flow::FlowRecord;
use crate::flow::labels::UNKNOWN;

mod misses;

pub use misses::MissCounts;
use misses::Misses;

/// Directories visited per walk of the cgroup2 tree, at most.
const MAX_CGROUPS: usize = 200_000;
const MAX_DEPTH: usize = 12;

/// The ECS agent's name for the awsvpc pause container (it holds the task's network
/// namespace and never talks itself).
const PAUSE_CONTAINER: &str = "~internal~ecs~pause";

/// cgroup id (inode of the cgroup2 directory) → what its path says.
#[derive(Debug, Default)]
pub struct CgroupIndex {
    pub owners: HashMap<u64, Option<CgroupOwner>>,
    /// The walk stopped at [`MAX_CGROUPS`].
    pub truncated: bool,
    /// Directories that could not be read (removed during the walk, permissions).
    pub unreadable: u64,
}

impl CgroupIndex {
    /// Walks `root` (a cgroup2 mount).
    pub fn walk(root: &Path) -> CgroupIndex {
        let mut idx = CgroupIndex::default();
        let mut stack: Vec<(PathBuf, usize)> = vec![(root.to_path_buf(), 0)];
        while let Some((dir, depth)) = stack.pop() {
            if idx.owners.len() >= MAX_CGROUPS {
                idx.truncated = true;
                break;
            }
            let Ok(meta) = std::fs::metadata(&dir) else {
                idx.unreadable += 1;
                continue;
            };
            let rel = dir.strip_prefix(root).map(|p| format!("/{}", p.display())).unwrap_or_default();
            idx.owners.insert(meta.ino(), parse(&rel));
            if depth >= MAX_DEPTH {
                continue;
            }
            match std::fs::read_dir(&dir) {
                Ok(rd) => {
                    for e in rd.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            stack.push((e.path(), depth + 1));
                        }
                    }
                }
                Err(_) => idx.unreadable += 1,
            }
        }
        idx
    }
}

/// Freshness and errors of the ECS provider, for `/status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EcsStatus {
    pub agent_uri: String,
    pub detected_by: String,
    pub cluster: Option<String>,
    pub containers: u64,
    pub cgroups: u64,
    pub cgroup_walk_truncated: bool,
    /// Walks of the cgroup tree: every `interval`, and soon after a lookup misses a new id.
    pub cgroup_walks: u64,
    pub cgroup_walks_on_miss: u64,
    /// Directories the walks could not read, in all.
    pub cgroup_unreadable: u64,
    /// Lookups of unknown cgroup ids, and ids that no walk found (see `ecs::local::misses`).
    pub cgroup_misses: MissCounts,
    /// Processes in containers and their network namespaces, as of the last `/proc` walk.
    pub container_processes: u64,
    pub container_netns: u64,
    /// Container processes that exited since the walk before, still naming their sockets
    /// until the next walk.
    pub container_processes_exited: u64,
    pub proc_walk_truncated: bool,
    pub refreshes: u64,
    pub last_refresh_age_seconds: Option<f64>,
    pub errors: BTreeMap<&'static str, u64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Snapshots {
    cgroups: Arc<CgroupIndex>,
    procs: Arc<ProcIndex>,
    ecs: Arc<Snapshot>,
}

impl Snapshots {
    /// Labels of a container id (`unknown` task when the ECS agent does not list it): the
    /// snapshot's own copy, shared.
    fn container(&self, id: &str) -> Arc<EcsLabels> {
        match self.ecs.containers.get(id) {
            Some(l) => l.clone(),
            None => Arc::new(EcsLabels::unknown_container(self.ecs.cluster.clone(), id)),
        }
    }

    /// Labels of a network namespace shared by `ids` (an awsvpc task's containers and its
    /// pause container, or one bridge-mode container).
    fn netns_labels(&self, ids: &BTreeSet<String>) -> EcsLabels {
        let known: Vec<&EcsLabels> =
            ids.iter().filter_map(|c| self.ecs.containers.get(c)).map(|l| l.as_ref()).collect();
        let apps: Vec<&&EcsLabels> =
            known.iter().filter(|l| l.container_name.as_deref() != Some(PAUSE_CONTAINER)).collect();
        if let [one] = apps.as_slice() {
            return (**one).clone();
        }
        match known.as_slice() {
            [first, rest @ ..] if rest.iter().all(|l| l.task_arn == first.task_arn) => EcsLabels {
                container_name: Some(UNKNOWN.into()),
                container_id: None,
                image: None,
                ..(*first).clone()
            },
            _ => match ids.iter().next() {
                Some(id) if ids.len() == 1 => EcsLabels::unknown_container(self.ecs.cluster.clone(), id),
                _ => EcsLabels {
                    cluster: self.ecs.cluster.clone(),
                    container_name: Some(UNKNOWN.into()),
                    ..Default::default()
                },
            },
        }
    }
}

/// Reads the snapshots; the refresher replaces them.
#[derive(Debug)]
pub struct LocalResolver {
    snapshots: RwLock<Snapshots>,
    status: Mutex<EcsStatus>,
    last_ok: Mutex<Option<Instant>>,
    /// Wakes the cgroup walker early when a lookup misses (a new container).
    misses: Misses,
}

impl LocalResolver {
    pub fn new(agent_uri: &str, detected_by: &str) -> Self {
        LocalResolver {
            snapshots: RwLock::new(Snapshots::default()),
            status: Mutex::new(EcsStatus {
                agent_uri: crate::redact::url(agent_uri),
                detected_by: detected_by.into(),
                ..Default::default()
            }),
            last_ok: Mutex::new(None),
            misses: Misses::default(),
        }
    }

    /// Labels for the local end of a flow: its socket's cgroup v2 id first, then the
    /// owning process's cgroup file, then its network namespace (see [`super::procs`]).
    pub fn labels(
        &self,
        cgroup_id: Option<u64>,
        pid: Option<u32>,
        netns: Option<u32>,
    ) -> Option<Arc<EcsLabels>> {
        let s = self.snapshots.read().unwrap_or_else(PoisonError::into_inner);
        let cluster = s.ecs.cluster.clone();
        let by_cgroup = cgroup_id.map(|id| s.cgroups.owners.get(&id));
        if let Some(Some(Some(owner))) = by_cgroup {
            return Some(s.container(&owner.container_id));
        }
        if let Some(owner) = pid.filter(|p| *p != 0).and_then(|p| s.procs.by_pid.get(&p)) {
            return Some(s.container(&owner.container_id));
        }
        if let Some(ids) = netns.and_then(|n| s.procs.by_netns.get(&u64::from(n))) {
            return Some(Arc::new(s.netns_labels(ids)));
        }
        match by_cgroup {
            Some(Some(_)) => Some(s.ecs.host.clone()),
            // A cgroup created since the last walk: walk again soon (once per id).
            Some(None) => {
                if let Some(id) = cgroup_id {
                    self.misses.miss(id);
                }
                Some(Arc::new(EcsLabels {
                    cluster,
                    container_name: Some(UNKNOWN.into()),
                    ..Default::default()
                }))
            }
            None => None,
        }
    }

    pub fn status(&self) -> EcsStatus {
        let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner).clone();
        s.last_refresh_age_seconds =
            self.last_ok.lock().unwrap_or_else(PoisonError::into_inner).map(|t| t.elapsed().as_secs_f64());
        s.cgroup_misses = self.misses.counts();
        s
    }

    /// Replaces the cgroup index with a walk's; `on_miss` when a miss asked for it.
    fn set_cgroups(&self, idx: CgroupIndex, on_miss: bool) {
        {
            let mut st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            st.cgroups = idx.owners.len() as u64;
            st.cgroup_walk_truncated = idx.truncated;
            st.cgroup_walks += 1;
            st.cgroup_walks_on_miss += u64::from(on_miss);
            st.cgroup_unreadable += idx.unreadable;
        }
        self.snapshots.write().unwrap_or_else(PoisonError::into_inner).cgroups = Arc::new(idx);
    }

    fn set_procs(&self, idx: ProcIndex) {
        {
            let mut st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            st.container_processes = (idx.by_pid.len() - idx.exited()) as u64;
            st.container_processes_exited = idx.exited() as u64;
            st.container_netns = idx.by_netns.len() as u64;
            st.proc_walk_truncated = idx.truncated;
        }
        self.snapshots.write().unwrap_or_else(PoisonError::into_inner).procs = Arc::new(idx);
    }

    fn set_ecs(&self, snap: Snapshot) {
        {
            let mut st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            st.refreshes += 1;
            st.containers = snap.containers.len() as u64;
            st.cluster = snap.cluster.clone();
        }
        *self.last_ok.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        self.snapshots.write().unwrap_or_else(PoisonError::into_inner).ecs = Arc::new(snap);
    }

    fn record_error(&self, e: &introspection::IntrospectionError) {
        let mut st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        *st.errors.entry(e.kind(&introspection::ERROR_KINDS)).or_default() += 1;
        st.last_error = Some(e.to_string());
    }
}

impl Enricher for LocalResolver {
    /// Sets `local.ecs`.
    fn enrich(&self, r: &mut FlowRecord) {
        r.local.ecs = self.labels(r.cgroup_id, r.pid, r.netns);
    }

    fn local_labels(&self, s: &crate::enrich::LocalSocket) -> Option<Arc<EcsLabels>> {
        self.labels(s.cgroup_id, s.pid, s.netns)
    }

    fn health(&self) -> crate::enrich::ProviderHealth {
        crate::enrich::ProviderHealth::new(LocalResolver::status(self))
    }
}

impl super::remote::Target for LocalResolver {
    fn cluster(&self) -> Option<String> {
        self.snapshots.read().unwrap_or_else(PoisonError::into_inner).ecs.cluster.clone()
    }

    fn arn(&self) -> Option<String> {
        self.snapshots.read().unwrap_or_else(PoisonError::into_inner).ecs.container_instance_arn.clone()
    }
}

/// Refresher settings.
#[derive(Clone, Debug)]
pub struct RefreshSettings {
    pub agent_uri: String,
    pub cgroup_root: Option<PathBuf>,
    /// The host's `/proc` (the agent runs with the host pid namespace).
    pub proc_root: PathBuf,
    pub interval: Duration,
    /// Longest wait after failures (doubling from `interval`).
    pub max_backoff: Duration,
    pub timeout: Duration,
}

/// Refreshes both snapshots until the runtime shuts down. Never panics on bad input:
/// errors are counted, the previous snapshot stays, and the wait doubles. The cgroup
/// tree is walked every `interval` (and soon after a lookup misses), independently of
/// the ECS agent's health.
pub async fn refresh_loop(resolver: Arc<LocalResolver>, s: RefreshSettings) {
    tokio::spawn(walk_loop(resolver.clone(), s.clone()));
    let uri = s.agent_uri.as_str();
    super::refresh::over_http(
        "ECS agent introspection",
        super::refresh::Backoff::new(s.interval, s.max_backoff),
        s.timeout,
        |c| async move { introspection::fetch(&c, uri).await },
        |snap| resolver.set_ecs(snap),
        |e| resolver.record_error(e),
    )
    .await;
}

/// Shortest time between two walks of the cgroup tree.
const MIN_WALK_GAP: Duration = Duration::from_millis(100);

async fn walk_loop(resolver: Arc<LocalResolver>, s: RefreshSettings) {
    let host_netns = own_netns();
    let mut last_procs: Option<Instant> = None;
    let mut on_miss = false;
    loop {
        let missed = resolver.misses.take_pending();
        let procs_due = last_procs.is_none_or(|t| t.elapsed() >= s.interval);
        let (cg, pr) = (s.cgroup_root.clone(), s.proc_root.clone());
        let previous = resolver.snapshots.read().unwrap_or_else(PoisonError::into_inner).procs.clone();
        let walked = tokio::task::spawn_blocking(move || {
            let cgroups = cg.map(|r| CgroupIndex::walk(&r));
            let procs = procs_due.then(|| ProcIndex::walk_after(&pr, host_netns, Some(&previous)));
            (cgroups, procs)
        })
        .await;
        match walked {
            Ok((cgroups, procs)) => {
                let found = |id| cgroups.as_ref().is_some_and(|c: &CgroupIndex| c.owners.contains_key(&id));
                resolver.misses.walked(missed, found);
                if let Some(idx) = cgroups {
                    resolver.set_cgroups(idx, on_miss);
                }
                if let Some(idx) = procs {
                    resolver.set_procs(idx);
                    last_procs = Some(Instant::now());
                }
            }
            Err(e) => tracing::warn!(error = %e, "ECS provider: cgroup/process walk failed"),
        }
        tokio::time::sleep(MIN_WALK_GAP).await;
        on_miss = tokio::time::timeout(s.interval.saturating_sub(MIN_WALK_GAP), resolver.misses.wait())
            .await
            .is_ok();
    }
}

crate::enrich::refreshed_health!(EcsStatus);

#[cfg(test)]
mod tests;
