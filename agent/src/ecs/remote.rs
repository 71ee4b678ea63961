//! Remote-side ECS identity: the peer address of a flow → the task (and container) of
//! this cluster behind it, from the ECS API.
//!
//! How: a background loop ([`refresh_loop`]) discovers the cluster's running tasks and
//! container instances through aws-sdk-ecs/aws-sdk-ec2 ([`api::discover`]) every
//! `ecs_api_refresh_interval` and swaps in an immutable [`index::RemoteIndex`]; the data
//! path only reads it ([`RemoteResolver`] is an [`Enricher`]). It labels `remote.ecs`
//! where nothing closer already did (intra-host peers are labelled from their own
//! flows without any API call), and completes local labels with what only the API
//! knows (service, availability zone).
//!
//! The SDK is configured by the standard AWS environment (`AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_ECS`, `AWS_ENDPOINT_URL_EC2`, credentials:
//! the task role on ECS); the region falls back to the one in the ECS agent's
//! container instance ARN, so no instance metadata call is needed for it.
//!
//! Limits: addresses are resolved as of the last refresh (a task started since is
//! unlabelled until the next one); client-side ephemeral ports of bridge-mode tasks
//! resolve to their container instance (`host`), not the task.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::enrich::Enricher;
use crate::flow::FlowRecord;
use crate::flow::labels::UNKNOWN;

pub mod api;
pub mod index;

use api::{Clients, DiscoveryError};
use index::RemoteIndex;

/// Freshness and errors of the ECS API provider, for `/status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RemoteStatus {
    pub cluster: Option<String>,
    pub region: Option<String>,
    pub tasks: u64,
    pub container_instances: u64,
    pub addresses: u64,
    pub tasks_truncated: u64,
    /// The last listing stopped at the ListTasks page cap ([`api::MAX_PAGES`]) with pages left;
    /// each such refresh is also counted in `errors.list_tasks_truncated`.
    pub list_tasks_truncated: bool,
    pub refreshes: u64,
    pub last_refresh_age_seconds: Option<f64>,
    pub last_refresh_duration_seconds: Option<f64>,
    pub errors: BTreeMap<&'static str, u64>,
    pub last_error: Option<String>,
    /// Remote ends labelled from the API since start.
    pub remote_labelled: u64,
}

/// Reads the index; the refresher replaces it.
#[derive(Debug, Default)]
pub struct RemoteResolver {
    index: RwLock<Arc<RemoteIndex>>,
    status: Mutex<RemoteStatus>,
    last_ok: Mutex<Option<Instant>>,
    labelled: std::sync::atomic::AtomicU64,
    /// The truncated-listing WARN was written (once per process).
    truncation_logged: std::sync::atomic::AtomicBool,
}

impl RemoteResolver {
    pub fn new() -> Self {
        Self::default()
    }

    fn index(&self) -> Arc<RemoteIndex> {
        self.index.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn set_index(&self, idx: RemoteIndex, took: Duration) {
        {
            let mut st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            st.refreshes += 1;
            st.tasks = idx.tasks() as u64;
            st.container_instances = idx.instances() as u64;
            st.addresses = idx.addresses() as u64;
            st.tasks_truncated = idx.truncated;
            st.list_tasks_truncated = idx.list_truncated;
            if idx.list_truncated {
                *st.errors.entry("list_tasks_truncated").or_default() += 1;
                if !self.truncation_logged.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        max_pages = api::MAX_PAGES,
                        "ECS API provider: ecs:ListTasks has more pages than the cap; tasks beyond it are \
                         not indexed and their addresses stay unlabelled (counted in /status ecs_api \
                         errors.list_tasks_truncated)"
                    );
                }
            }
            st.last_refresh_duration_seconds = Some(took.as_secs_f64());
        }
        *self.last_ok.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        *self.index.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(idx);
    }

    fn record_error(&self, e: &DiscoveryError) {
        let mut st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        *st.errors.entry(e.kind()).or_default() += 1;
        st.last_error = Some(e.to_string());
    }

    fn set_target(&self, cluster: &str, region: Option<String>) {
        let mut st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        st.cluster = Some(cluster.to_string());
        st.region = region;
    }

    pub fn status(&self) -> RemoteStatus {
        let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner).clone();
        s.last_refresh_age_seconds =
            self.last_ok.lock().unwrap_or_else(PoisonError::into_inner).map(|t| t.elapsed().as_secs_f64());
        s.remote_labelled = self.labelled.load(std::sync::atomic::Ordering::Relaxed);
        s
    }
}

impl Enricher for RemoteResolver {
    fn enrich(&self, r: &mut FlowRecord) {
        let idx = self.index();
        if let Some(l) = r.local.ecs.as_mut() {
            idx.complete(l);
        }
        match r.remote.ecs.as_mut() {
            // A peer on this host labelled with its task: that is the most precise answer.
            Some(l) if l.task_arn.as_deref().is_some_and(|a| a != UNKNOWN) => idx.complete(l),
            // Nothing, or a peer without a task (host process, unknown container): the API may know better.
            _ => match (idx.lookup(r.protocol, r.remote.addr, r.remote.port), r.remote.ecs.as_mut()) {
                (None, _) => {}
                // Both say "no task" (e.g. a container instance itself): keep the peer's, add the zone.
                (Some(l), Some(cur)) if l.task_arn.is_none() => {
                    if cur.availability_zone.is_none() && l.availability_zone.is_some() {
                        std::sync::Arc::make_mut(cur).availability_zone = l.availability_zone;
                    }
                }
                (Some(l), _) => {
                    r.remote.ecs = Some(std::sync::Arc::new(l));
                    self.labelled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            },
        }
    }

    fn health(&self) -> crate::enrich::ProviderHealth {
        crate::enrich::ProviderHealth::new(RemoteResolver::status(self))
    }
}

/// Where the cluster name and region come from.
pub trait Target: Send + Sync {
    /// The cluster to discover (`None`: not known yet).
    fn cluster(&self) -> Option<String>;
    /// An ARN of this cluster (its region is the fallback region).
    fn arn(&self) -> Option<String>;
}

/// Refresher settings.
#[derive(Clone, Debug)]
pub struct RemoteSettings {
    pub interval: Duration,
    pub max_backoff: Duration,
    /// Per API call, retries included.
    pub timeout: Duration,
    /// FIPS mode: FIPS endpoints and TLS client (see [`crate::fips`]).
    pub fips: bool,
}

/// The ECS and EC2 clients of the ECS API provider, and the region they use.
async fn clients(region_hint: Option<String>, timeout: Duration, fips: bool) -> (Clients, Option<String>) {
    let conf = crate::aws::sdk::config(region_hint, timeout, fips).await;
    let region = conf.region().map(|r| r.to_string());
    (Clients { ecs: aws_sdk_ecs::Client::new(&conf), ec2: aws_sdk_ec2::Client::new(&conf) }, region)
}

/// How long to wait for the cluster name before asking again.
const TARGET_WAIT: Duration = Duration::from_secs(1);

/// Discovers the cluster until the runtime shuts down. Errors are counted, the last
/// index stays, and the wait doubles up to `max_backoff` (access denied: logged once,
/// then retried at `max_backoff`).
pub async fn refresh_loop(resolver: Arc<RemoteResolver>, target: Arc<dyn Target>, s: RemoteSettings) {
    let cluster = loop {
        if let Some(c) = target.cluster() {
            break c;
        }
        tokio::time::sleep(TARGET_WAIT).await;
    };
    let hint = target.arn().as_deref().and_then(index::region_of);
    let (clients, region) = clients(hint, s.timeout, s.fips).await;
    tracing::info!(%cluster, region = region.as_deref().unwrap_or("none"), "ECS API provider on: remote ends get ECS labels");
    resolver.set_target(&cluster, region);
    let mut backoff = super::refresh::Backoff::new(s.interval, s.max_backoff);
    // The IAM actions found denied: each is named once (until a refresh succeeds again).
    let mut denied_logged: std::collections::BTreeSet<&'static str> = Default::default();
    loop {
        let started = Instant::now();
        let wait = match api::discover(&clients, &cluster).await {
            Ok(d) => {
                resolver.set_index(RemoteIndex::build(d), started.elapsed());
                denied_logged.clear();
                backoff.succeeded()
            }
            Err(e) => {
                resolver.record_error(&e);
                if let DiscoveryError::AccessDenied { action, .. } = &e {
                    if denied_logged.insert(action) {
                        tracing::error!(error = %e, "ECS API provider");
                    }
                    backoff.longest()
                } else {
                    tracing::warn!(error = %e, "ECS API provider: refresh failed; keeping the last index");
                    backoff.failed()
                }
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The configured cluster (`ecs_cluster`) over what another target reports.
pub struct ConfiguredCluster {
    pub cluster: Option<String>,
    pub inner: Arc<dyn Target>,
}

impl Target for ConfiguredCluster {
    fn cluster(&self) -> Option<String> {
        self.cluster.clone().or_else(|| self.inner.cluster())
    }

    fn arn(&self) -> Option<String> {
        self.inner.arn()
    }
}

crate::enrich::refreshed_health!(RemoteStatus);

#[cfg(test)]
mod tests {
    use super::index::{ContainerInfo, Discovered, TaskInfo};
    use super::*;
    use crate::flow::EcsLabels;
    use crate::flow::{Endpoint, Protocol};

    fn resolver() -> RemoteResolver {
        let r = RemoteResolver::new();
        let task = TaskInfo {
            labels: EcsLabels {
                task_arn: Some("arn:task/api".into()),
                task_family: Some("api".into()),
                service: Some("api-svc".into()),
                ..Default::default()
            },
            eni_addrs: vec!["10.0.2.7".parse().expect("ip")],
            containers: vec![ContainerInfo { name: Some("api".into()), ..Default::default() }],
            ..Default::default()
        };
        let d = Discovered { cluster: "prod".into(), tasks: vec![task], ..Default::default() };
        r.set_index(RemoteIndex::build(d), Duration::ZERO);
        r
    }

    fn flow_to(addr: &str, remote: Option<EcsLabels>) -> FlowRecord {
        let mut f = FlowRecord::test(Protocol::Tcp, 1, false);
        f.remote = Endpoint::new(addr.parse().expect("ip"), 9000);
        f.remote.ecs = remote.map(std::sync::Arc::new);
        f.local.ecs = Some(std::sync::Arc::new(EcsLabels {
            task_arn: Some("arn:task/api".into()),
            ..Default::default()
        }));
        f
    }

    #[test]
    fn api_labels_fill_gaps_but_never_override_a_peer_task() {
        let r = resolver();
        let mut f = flow_to("10.0.2.7", None);
        r.enrich(&mut f);
        assert_eq!(f.remote.ecs.as_ref().and_then(|l| l.task_family.as_deref()), Some("api"));
        assert_eq!(f.local.ecs.as_ref().and_then(|l| l.service.as_deref()), Some("api-svc"), "completed");
        // A peer without a task (host process, unknown container): the API's task wins.
        let mut f = flow_to("10.0.2.7", Some(EcsLabels::host(None)));
        r.enrich(&mut f);
        assert_eq!(f.remote.ecs.as_ref().and_then(|l| l.task_family.as_deref()), Some("api"));
        // A peer with its task: kept.
        let peer = EcsLabels { task_arn: Some("arn:task/other".into()), ..Default::default() };
        let mut f = flow_to("10.0.2.7", Some(peer.clone()));
        r.enrich(&mut f);
        assert_eq!(f.remote.ecs.as_deref(), Some(&peer));
        // Not the cluster's: untouched.
        let mut f = flow_to("192.0.2.1", None);
        r.enrich(&mut f);
        assert!(f.remote.ecs.is_none());
        assert_eq!(r.status().remote_labelled, 2);
        assert_eq!(r.status().tasks, 1);
    }
}
