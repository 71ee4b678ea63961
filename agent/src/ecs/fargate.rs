//! ECS identity on Fargate (and in any task with task metadata v4 where the
//! `sock_diag` collector runs in the task's network namespace): every flow the agent
//! sees belongs to its own task.
//!
//! What: `local.ecs` on every flow — cluster, task ARN, family, revision, service,
//! launch type, availability zone, network mode; the container (name, id, image) when
//! exactly one container of the task lists the local port in its port mappings, else
//! `container_name = "unknown"` (the task's containers share one network namespace, so
//! nothing else says which one owns a socket). The remote end gets the same task's
//! labels when its address is the task's own (loopback or the task ENI's addresses).
//!
//! How: `$ECS_CONTAINER_METADATA_URI_V4/task` ([`task_metadata`]) is fetched in the
//! background ([`refresh_loop`]: timeout, errors counted by kind, doubling backoff) into
//! an immutable snapshot; [`TaskMetadataResolver::enrich`] only reads it. Until the first
//! successful fetch, and whenever fetches fail before one succeeded, labels are
//! `unknown` (flows are never held back).
//!
//! Limits: `/task/stats` is not read (it has no per-connection data); tasks of other
//! hosts are not resolved.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::task_metadata::{self, TaskMetadataError, TaskSnapshot};
use crate::enrich::Enricher;
use crate::flow::FlowRecord;

/// Freshness and errors of the task metadata provider, for `/status.ecs`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TaskMetadataStatus {
    pub provider: &'static str,
    pub metadata_uri: String,
    pub task_arn: Option<String>,
    pub containers: u64,
    pub refreshes: u64,
    pub last_refresh_age_seconds: Option<f64>,
    pub errors: BTreeMap<&'static str, u64>,
    pub last_error: Option<String>,
}

/// Reads the snapshot; the refresher replaces it.
#[derive(Debug)]
pub struct TaskMetadataResolver {
    snapshot: RwLock<Arc<TaskSnapshot>>,
    status: Mutex<TaskMetadataStatus>,
    last_ok: Mutex<Option<Instant>>,
}

impl TaskMetadataResolver {
    pub fn new(metadata_uri: &str) -> Self {
        TaskMetadataResolver {
            snapshot: RwLock::new(Arc::new(TaskSnapshot::unknown("FARGATE"))),
            status: Mutex::new(TaskMetadataStatus {
                provider: "task_metadata_v4",
                metadata_uri: crate::redact::url(metadata_uri),
                ..Default::default()
            }),
            last_ok: Mutex::new(None),
        }
    }

    fn snapshot(&self) -> Arc<TaskSnapshot> {
        self.snapshot.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn set(&self, snap: TaskSnapshot) {
        {
            let mut st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            st.refreshes += 1;
            st.containers = snap.containers as u64;
            st.task_arn = snap.task.task_arn.clone();
        }
        *self.last_ok.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        *self.snapshot.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(snap);
    }

    pub fn record_error(&self, e: &TaskMetadataError) {
        let mut st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        *st.errors.entry(e.kind(&task_metadata::ERROR_KINDS)).or_default() += 1;
        st.last_error = Some(e.to_string());
    }

    pub fn status(&self) -> TaskMetadataStatus {
        let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner).clone();
        s.last_refresh_age_seconds =
            self.last_ok.lock().unwrap_or_else(PoisonError::into_inner).map(|t| t.elapsed().as_secs_f64());
        s
    }
}

impl Enricher for TaskMetadataResolver {
    /// Sets `local.ecs`, and `remote.ecs` when the remote address is the task's own.
    fn enrich(&self, r: &mut FlowRecord) {
        let snap = self.snapshot();
        r.local.ecs = Some(Arc::new(snap.labels_for_port(r.local.port)));
        if snap.is_own(r.remote.addr) {
            r.remote.ecs = Some(Arc::new(snap.labels_for_port(r.remote.port)));
        }
    }

    fn local_labels(&self, s: &crate::enrich::LocalSocket) -> Option<Arc<crate::flow::EcsLabels>> {
        Some(Arc::new(self.snapshot().labels_for_port(s.addr.port())))
    }

    fn health(&self) -> crate::enrich::ProviderHealth {
        crate::enrich::ProviderHealth::new(TaskMetadataResolver::status(self))
    }
}

/// Refresher settings.
#[derive(Clone, Debug)]
pub struct RefreshSettings {
    pub metadata_uri: String,
    pub interval: Duration,
    /// Longest wait after failures (doubling from `interval`).
    pub max_backoff: Duration,
    pub timeout: Duration,
}

/// Refreshes the snapshot until the runtime shuts down. Errors are counted, the
/// previous snapshot stays, and the wait doubles up to `max_backoff`.
pub async fn refresh_loop(resolver: Arc<TaskMetadataResolver>, s: RefreshSettings) {
    let uri = s.metadata_uri.as_str();
    super::refresh::over_http(
        "task metadata",
        super::refresh::Backoff::new(s.interval, s.max_backoff),
        s.timeout,
        |c| async move { task_metadata::fetch(&c, uri).await },
        |snap| resolver.set(snap),
        |e| resolver.record_error(e),
    )
    .await;
}

crate::enrich::refreshed_health!(TaskMetadataStatus);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::task_metadata::TaskDocument;
    use crate::flow::Protocol;
    use crate::flow::labels::UNKNOWN;

    fn resolver_with_fixture() -> TaskMetadataResolver {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/ecs/tmds_v4_task_fargate.json");
        let doc: TaskDocument =
            serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("doc");
        let r = TaskMetadataResolver::new("http://127.0.0.1:1/v4/x");
        r.set(TaskSnapshot::build(&doc));
        r
    }

    #[test]
    fn labels_local_and_own_remote_ends() {
        let r = resolver_with_fixture();
        let mut rec = FlowRecord::test(Protocol::Tcp, 1, false);
        r.enrich(&mut rec);
        let v = serde_json::to_value(&rec).expect("json");
        assert_eq!(v["local"]["ecs"]["task_family"], "api");
        assert_eq!(v["local"]["ecs"]["container_name"], UNKNOWN);
        assert_eq!(v["remote"]["ecs"]["task_revision"], "3", "loopback peer is the same task");
        let mut rec = FlowRecord::test(Protocol::Tcp, 2, false);
        rec.remote.addr = "10.9.9.9".parse().expect("ip");
        r.enrich(&mut rec);
        assert!(rec.remote.ecs.is_none(), "not the task's address");
        let st = r.status();
        assert_eq!((st.refreshes, st.containers), (1, 1));
    }

    #[test]
    fn errors_are_counted_by_kind_and_labels_stay_unknown() {
        let r = TaskMetadataResolver::new("http://127.0.0.1:1/v4/x");
        r.record_error(&TaskMetadataError::Status { url: "u".into(), status: 500 });
        r.record_error(&TaskMetadataError::Decode { url: "u".into(), reason: "eof".into() });
        r.record_error(&TaskMetadataError::Decode { url: "u".into(), reason: "eof".into() });
        let st = r.status();
        assert_eq!(st.errors["task_metadata_http_errors"], 1);
        assert_eq!(st.errors["task_metadata_malformed_responses"], 2);
        assert!(st.last_error.is_some_and(|e| e.contains("malformed")));
        let mut rec = FlowRecord::test(Protocol::Tcp, 1, false);
        r.enrich(&mut rec);
        let l = rec.local.ecs.expect("labels");
        assert_eq!((l.task_family.as_deref(), l.launch_type.as_deref()), (Some(UNKNOWN), Some("FARGATE")));
    }
}
