//! The enrichment seam: something that labels flow records from a background-refreshed
//! snapshot. Implementations: [`crate::ecs::local::LocalResolver`] (ECS on EC2, through
//! the ECS agent), [`crate::ecs::fargate::TaskMetadataResolver`] (Fargate, through task
//! metadata v4), and the test fake [`FixedLabels`]. `enrich` only reads a snapshot: it
//! never blocks on I/O, and what it cannot resolve it labels `unknown`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

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
    fn local_labels(&self, _socket: &LocalSocket) -> Option<Arc<crate::flow::EcsLabels>> {
        None
    }
    /// Freshness and error counters, for `/status` and `/metrics`.
    fn health(&self) -> ProviderHealth;
}

/// What an enricher reports about itself: its own typed status, shown as it serializes in
/// `/status`; `/metrics` reads the common numbers through this trait and provider-specific ones
/// by downcasting to the provider's status type ([`ProviderHealth::get`]), never by JSON key.
pub trait Health: std::fmt::Debug + Send + Sync + std::any::Any {
    /// Failed refreshes by cause.
    fn errors(&self) -> BTreeMap<&'static str, u64> {
        BTreeMap::new()
    }
    /// Seconds since the last successful refresh (`None`: none yet, or no refresh).
    fn last_refresh_age_seconds(&self) -> Option<f64> {
        None
    }
    /// The `/status` object.
    fn to_json(&self) -> serde_json::Value;
}

/// [`Health`] for a serializable status type with `errors` and `last_refresh_age_seconds`
/// fields (the ECS providers).
macro_rules! refreshed_health {
    ($t:ty) => {
        impl $crate::enrich::Health for $t {
            fn errors(&self) -> std::collections::BTreeMap<&'static str, u64> {
                self.errors.clone()
            }
            fn last_refresh_age_seconds(&self) -> Option<f64> {
                self.last_refresh_age_seconds
            }
            fn to_json(&self) -> serde_json::Value {
                serde_json::to_value(self).unwrap_or_default()
            }
        }
    };
}

pub(crate) use refreshed_health;

/// One provider's health, as `/status` and `/metrics` read it.
#[derive(Clone, Debug)]
pub struct ProviderHealth(pub Arc<dyn Health>);

impl ProviderHealth {
    pub fn new(h: impl Health) -> Self {
        ProviderHealth(Arc::new(h))
    }

    pub fn errors(&self) -> BTreeMap<&'static str, u64> {
        self.0.errors()
    }

    pub fn last_refresh_age_seconds(&self) -> Option<f64> {
        self.0.last_refresh_age_seconds()
    }

    /// The provider's own status type, when it is `T`.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        let any: &dyn std::any::Any = self.0.as_ref();
        any.downcast_ref::<T>()
    }
}

impl Serialize for ProviderHealth {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.to_json().serialize(s)
    }
}

/// The test fake's status.
#[cfg(test)]
#[derive(Debug)]
struct Fixed;

#[cfg(test)]
impl Health for Fixed {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "fixed": true })
    }
}

#[cfg(test)]
/// Test fake: the same local labels on every record.
#[derive(Debug, Default)]
pub struct FixedLabels(pub EcsLabels);

#[cfg(test)]
impl Enricher for FixedLabels {
    fn enrich(&self, r: &mut FlowRecord) {
        r.local.ecs = Some(Arc::new(self.0.clone()));
    }

    fn local_labels(&self, _socket: &LocalSocket) -> Option<Arc<EcsLabels>> {
        Some(Arc::new(self.0.clone()))
    }

    fn health(&self) -> ProviderHealth {
        ProviderHealth::new(Fixed)
    }
}
