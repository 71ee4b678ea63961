//! Local-side attribution: socket cgroup id → cgroup directory → container →
//! ECS task and container, from two background-refreshed, immutable snapshots
//! (the cgroup2 tree and the ECS agent's task list). [`LocalResolver::labels`]
//! only reads them.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cgroup::{CgroupOwner, parse};
use super::introspection::{self, Snapshot};
use super::{EcsLabels, UNKNOWN};
use crate::enrich::Enricher;
use crate::flow::FlowRecord;

/// Directories visited per walk of the cgroup2 tree, at most.
const MAX_CGROUPS: usize = 200_000;
const MAX_DEPTH: usize = 12;

/// cgroup id (inode of the cgroup2 directory) → what its path says.
#[derive(Debug, Default)]
pub struct CgroupIndex {
    pub owners: HashMap<u64, Option<CgroupOwner>>,
    /// The walk stopped at [`MAX_CGROUPS`].
    pub truncated: bool,
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
            let Ok(meta) = std::fs::metadata(&dir) else { continue };
            let rel = dir.strip_prefix(root).map(|p| format!("/{}", p.display())).unwrap_or_default();
            idx.owners.insert(meta.ino(), parse(&rel));
            if depth >= MAX_DEPTH {
                continue;
            }
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push((e.path(), depth + 1));
                    }
                }
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
    pub refreshes: u64,
    pub last_refresh_age_seconds: Option<f64>,
    pub errors: BTreeMap<&'static str, u64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Snapshots {
    cgroups: Arc<CgroupIndex>,
    ecs: Arc<Snapshot>,
}

/// Reads the snapshots; the refresher replaces them.
#[derive(Debug)]
pub struct LocalResolver {
    snapshots: RwLock<Snapshots>,
    status: Mutex<EcsStatus>,
    last_ok: Mutex<Option<Instant>>,
    /// Wakes the cgroup walker early when a lookup misses (a new container).
    missed: tokio::sync::Notify,
}

impl LocalResolver {
    pub fn new(agent_uri: &str, detected_by: &str) -> Self {
        LocalResolver {
            snapshots: RwLock::new(Snapshots::default()),
            status: Mutex::new(EcsStatus {
                agent_uri: agent_uri.into(),
                detected_by: detected_by.into(),
                ..Default::default()
            }),
            last_ok: Mutex::new(None),
            missed: tokio::sync::Notify::new(),
        }
    }

    /// Labels for the local end of a flow with this socket cgroup id.
    pub fn labels(&self, cgroup_id: Option<u64>) -> Option<EcsLabels> {
        let s = self.snapshots.read().unwrap_or_else(PoisonError::into_inner);
        let cluster = s.ecs.cluster.clone();
        let id = cgroup_id?;
        Some(match s.cgroups.owners.get(&id) {
            Some(Some(owner)) => match s.ecs.containers.get(&owner.container_id) {
                Some(l) => l.clone(),
                None => EcsLabels::unknown_container(cluster, &owner.container_id),
            },
            Some(None) => EcsLabels::host(cluster),
            // A cgroup created since the last walk: walk again soon.
            None => {
                self.missed.notify_one();
                EcsLabels { cluster, container_name: Some(UNKNOWN.into()), ..Default::default() }
            }
        })
    }

    pub fn status(&self) -> EcsStatus {
        let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner).clone();
        s.last_refresh_age_seconds =
            self.last_ok.lock().unwrap_or_else(PoisonError::into_inner).map(|t| t.elapsed().as_secs_f64());
        s
    }

    fn set_cgroups(&self, idx: CgroupIndex) {
        {
            let mut st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            st.cgroups = idx.owners.len() as u64;
            st.cgroup_walk_truncated = idx.truncated;
        }
        self.snapshots.write().unwrap_or_else(PoisonError::into_inner).cgroups = Arc::new(idx);
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
        *st.errors.entry(e.kind()).or_default() += 1;
        st.last_error = Some(e.to_string());
    }
}

impl Enricher for LocalResolver {
    /// Sets `local.ecs`.
    fn enrich(&self, r: &mut FlowRecord) {
        r.local.ecs = self.labels(r.cgroup_id).map(Box::new);
    }

    fn status(&self) -> serde_json::Value {
        serde_json::to_value(LocalResolver::status(self)).unwrap_or_default()
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
    if let Some(root) = s.cgroup_root.clone() {
        tokio::spawn(walk_loop(resolver.clone(), root, s.interval));
    }
    let client = match reqwest::Client::builder().timeout(s.timeout).connect_timeout(s.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "ECS provider: cannot build an HTTP client; ECS labels disabled");
            return;
        }
    };
    let mut wait = s.interval;
    loop {
        match introspection::fetch(&client, &s.agent_uri).await {
            Ok(snap) => {
                resolver.set_ecs(snap);
                wait = s.interval;
            }
            Err(e) => {
                tracing::warn!(error = %e, "ECS provider: introspection refresh failed; keeping the last snapshot");
                resolver.record_error(&e);
                wait = (wait * 2).min(s.max_backoff);
            }
        }
        tokio::time::sleep(wait).await;
    }
}

/// Shortest time between two walks of the cgroup tree.
const MIN_WALK_GAP: Duration = Duration::from_millis(100);

async fn walk_loop(resolver: Arc<LocalResolver>, root: PathBuf, interval: Duration) {
    loop {
        let r = root.clone();
        match tokio::task::spawn_blocking(move || CgroupIndex::walk(&r)).await {
            Ok(idx) => resolver.set_cgroups(idx),
            Err(e) => tracing::warn!(error = %e, "ECS provider: cgroup walk failed"),
        }
        tokio::time::sleep(MIN_WALK_GAP).await;
        let _ = tokio::time::timeout(interval.saturating_sub(MIN_WALK_GAP), resolver.missed.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Protocol;

    const C: &str = "9a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f3021";

    #[test]
    fn host_container_unknown_and_missing() {
        let r = LocalResolver::new("http://x", "test");
        let mut owners = HashMap::new();
        owners.insert(1, None);
        owners.insert(2, Some(CgroupOwner { container_id: C.into(), task_id: None }));
        owners.insert(3, Some(CgroupOwner { container_id: "f".repeat(64), task_id: None }));
        r.set_cgroups(CgroupIndex { owners, truncated: false });
        let mut snap = Snapshot { cluster: Some("flows".into()), ..Default::default() };
        snap.containers.insert(
            C.into(),
            EcsLabels {
                task_family: Some("web".into()),
                container_name: Some("web".into()),
                ..Default::default()
            },
        );
        r.set_ecs(snap);
        assert_eq!(r.labels(Some(1)).and_then(|l| l.container_name).as_deref(), Some("host"));
        assert_eq!(r.labels(Some(2)).and_then(|l| l.task_family).as_deref(), Some("web"));
        let unknown = r.labels(Some(3)).expect("labels");
        assert_eq!(
            (unknown.task_family.as_deref(), unknown.cluster.as_deref()),
            (Some(UNKNOWN), Some("flows"))
        );
        assert_eq!(r.labels(Some(4)).and_then(|l| l.container_name).as_deref(), Some(UNKNOWN));
        assert_eq!(r.labels(None), None);
        let mut rec = FlowRecord::test(Protocol::Tcp, 1, false);
        rec.cgroup_id = Some(2);
        r.enrich(&mut rec);
        let v = serde_json::to_value(&rec).expect("json");
        assert_eq!(v["local"]["ecs"]["task_family"], "web");
        assert!(v["remote"].get("ecs").is_none());
        assert_eq!(r.status().containers, 1);
    }

    #[test]
    fn walks_a_directory_tree_by_inode() {
        let root = std::env::temp_dir().join(format!("eddy-cg-{}", std::process::id()));
        let dir = root.join("ecs").join("4b5c6d7e8f9041a2b3c4d5e6f7a8b9c0").join(C);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let idx = CgroupIndex::walk(&root);
        let ino = std::fs::metadata(&dir).expect("meta").ino();
        assert_eq!(idx.owners.get(&ino).cloned().flatten().map(|o| o.container_id).as_deref(), Some(C));
        assert_eq!(idx.owners.get(&std::fs::metadata(&root).expect("meta").ino()), Some(&None));
        std::fs::remove_dir_all(root).ok();
    }
}
