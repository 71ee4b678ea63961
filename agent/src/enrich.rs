//! The enrichment seam: something that labels flow records from a background-refreshed
//! snapshot. Implementations: [`crate::ecs::local::LocalResolver`] (ECS on EC2, through
//! the ECS agent), [`crate::ecs::fargate::TaskMetadataResolver`] (Fargate, through task
//! metadata v4), and the test fake [`FixedLabels`]. `enrich` only reads a snapshot: it
//! never blocks on I/O, and what it cannot resolve it labels `unknown`.

use crate::ecs::EcsLabels;
use crate::flow::FlowRecord;

/// Labels the ends of flows.
pub trait Enricher: Send + Sync + std::fmt::Debug {
    /// Sets what this enricher knows on the record (never blocks).
    fn enrich(&self, r: &mut FlowRecord);
    /// Freshness and error counters, for `/status`.
    fn status(&self) -> serde_json::Value;
}

/// Test fake: the same local labels on every record.
#[derive(Debug, Default)]
pub struct FixedLabels(pub EcsLabels);

impl Enricher for FixedLabels {
    fn enrich(&self, r: &mut FlowRecord) {
        r.local.ecs = Some(Box::new(self.0.clone()));
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({ "fixed": true })
    }
}
