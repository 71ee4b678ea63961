//! The enrichment seam: something that labels flow records from a background-refreshed
//! snapshot. Implementations: [`crate::ecs::local::LocalResolver`] (ECS on EC2, through
//! the ECS agent), [`crate::ecs::fargate::TaskMetadataResolver`] (Fargate, through task
//! metadata v4), and the test fake [`FixedLabels`]. `enrich` only reads a snapshot: it
//! never blocks on I/O, and what it cannot resolve it labels `unknown`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::aws::enricher::AwsStatus;
use crate::conntrack::ConntrackStatus;
use crate::ecs::fargate::TaskMetadataStatus;
use crate::ecs::local::EcsStatus;
use crate::ecs::remote::RemoteStatus;
#[cfg(test)]
use crate::flow::EcsLabels;
use crate::flow::FlowRecord;

/// What is known of a local socket outside any flow record (the sender of a DNS packet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalSocket {
    pub addr: std::net::SocketAddr,
    pub cgroup_id: Option<u64>,
    pub pid: Option<u32>,
    pub netns: Option<u32>,
}

/// Labels the ends of flows.
pub trait Enricher: Send + Sync + std::fmt::Debug {
    /// Sets what this enricher knows on the record (never blocks).
    fn enrich(&self, r: &mut FlowRecord);
    /// The local ECS identity of a socket (`None`: this enricher does not name local ends).
    fn local_labels(&self, _socket: &LocalSocket) -> Option<crate::flow::EcsLabels> {
        None
    }
    /// Freshness and error counters, for `/status` and `/metrics`.
    fn health(&self) -> ProviderHealth;
}

/// What an enricher reports: its own typed status (serialized as is in `/status`), read by
/// `/metrics` through [`ProviderHealth::errors`] and [`ProviderHealth::last_refresh_age_seconds`].
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum ProviderHealth {
    /// ECS on EC2: the ECS agent and the cgroup tree.
    Ecs(Box<EcsStatus>),
    /// Fargate: task metadata v4.
    Fargate(TaskMetadataStatus),
    /// Remote ends through the ECS API.
    EcsApi(RemoteStatus),
    /// Enhanced resolution.
    Aws(Box<AwsStatus>),
    /// NAT translations.
    Conntrack(ConntrackStatus),
    /// The test fake.
    Fixed { fixed: bool },
}

impl ProviderHealth {
    /// Failed refreshes by cause.
    pub fn errors(&self) -> BTreeMap<&'static str, u64> {
        match self {
            ProviderHealth::Ecs(s) => s.errors.clone(),
            ProviderHealth::Fargate(s) => s.errors.clone(),
            ProviderHealth::EcsApi(s) => s.errors.clone(),
            ProviderHealth::Aws(s) => s.errors.clone(),
            ProviderHealth::Conntrack(_) | ProviderHealth::Fixed { .. } => BTreeMap::new(),
        }
    }

    /// Seconds since the last successful refresh (`None`: none yet, or no refresh).
    pub fn last_refresh_age_seconds(&self) -> Option<f64> {
        match self {
            ProviderHealth::Ecs(s) => s.last_refresh_age_seconds,
            ProviderHealth::Fargate(s) => s.last_refresh_age_seconds,
            ProviderHealth::EcsApi(s) => s.last_refresh_age_seconds,
            ProviderHealth::Aws(_) | ProviderHealth::Conntrack(_) | ProviderHealth::Fixed { .. } => None,
        }
    }
}

#[cfg(test)]
/// Test fake: the same local labels on every record.
#[derive(Debug, Default)]
pub struct FixedLabels(pub EcsLabels);

#[cfg(test)]
impl Enricher for FixedLabels {
    fn enrich(&self, r: &mut FlowRecord) {
        r.local.ecs = Some(Box::new(self.0.clone()));
    }

    fn local_labels(&self, _socket: &LocalSocket) -> Option<EcsLabels> {
        Some(self.0.clone())
    }

    fn health(&self) -> ProviderHealth {
        ProviderHealth::Fixed { fixed: true }
    }
}
