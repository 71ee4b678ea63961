//! The ECS agent introspection API (`/v1/metadata`, `/v1/tasks`) as AWS documents
//! it, and the snapshot built from it: container id → [`EcsLabels`].
//!
//! Bad input (malformed or truncated JSON, HTTP errors, stalls) is an error the
//! refresher counts and backs off from; the previous snapshot stays in use.

use std::collections::HashMap;

use serde::Deserialize;

use super::fetch::{FetchError, get_json};
use crate::flow::EcsLabels;

/// `GET /v1/metadata`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Metadata {
    pub cluster: Option<String>,
    pub container_instance_arn: Option<String>,
    pub version: Option<String>,
}

/// `GET /v1/tasks`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Tasks {
    #[serde(rename = "Tasks", default)]
    pub tasks: Vec<Task>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Task {
    pub arn: String,
    pub family: Option<String>,
    pub version: Option<String>,
    pub known_status: Option<String>,
    #[serde(default)]
    pub containers: Vec<Container>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Container {
    pub docker_id: String,
    pub name: Option<String>,
    pub image: Option<String>,
    #[serde(default)]
    pub networks: Vec<Network>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Network {
    pub network_mode: Option<String>,
    #[serde(rename = "IPv4Addresses", default)]
    pub ipv4_addresses: Vec<String>,
}

/// Labels of every container the ECS agent reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub cluster: Option<String>,
    pub container_instance_arn: Option<String>,
    /// Docker id → labels, one shared copy each (every flow of the container points at it).
    pub containers: HashMap<String, std::sync::Arc<EcsLabels>>,
    /// Labels of processes outside any container (shared likewise).
    pub host: std::sync::Arc<EcsLabels>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            cluster: None,
            container_instance_arn: None,
            containers: HashMap::new(),
            host: std::sync::Arc::new(EcsLabels::host(None)),
        }
    }
}

impl Snapshot {
    pub fn build(meta: &Metadata, tasks: &Tasks) -> Snapshot {
        let mut containers = HashMap::new();
        for t in &tasks.tasks {
            let network_mode =
                t.containers.iter().flat_map(|c| &c.networks).find_map(|n| n.network_mode.clone());
            for c in &t.containers {
                containers.insert(
                    c.docker_id.clone(),
                    std::sync::Arc::new(EcsLabels {
                        cluster: meta.cluster.clone(),
                        task_arn: Some(t.arn.clone()),
                        task_family: t.family.clone(),
                        task_revision: t.version.clone(),
                        service: None,
                        container_name: c.name.clone(),
                        container_id: Some(c.docker_id.clone()),
                        image: c.image.clone(),
                        launch_type: Some("EC2".into()),
                        availability_zone: None,
                        network_mode: network_mode.clone().or_else(|| Some("bridge".into())),
                    }),
                );
            }
        }
        Snapshot {
            cluster: meta.cluster.clone(),
            container_instance_arn: meta.container_instance_arn.clone(),
            containers,
            host: std::sync::Arc::new(EcsLabels::host(meta.cluster.clone())),
        }
    }
}

/// Why a refresh failed.
pub type IntrospectionError = FetchError;

/// Counter names in `/status`, by failure.
pub const ERROR_KINDS: [&str; 4] = [
    "ecs_agent_unreachable",
    "ecs_agent_http_errors",
    "ecs_agent_malformed_responses",
    "ecs_agent_oversized_responses",
];

/// Largest `/v1/metadata` body read (64 KiB; a real one is under 1 KiB).
pub const METADATA_MAX_BYTES: usize = 64 << 10;
/// Largest `/v1/tasks` body read (4 MiB: about 2,000 tasks of several containers each, far
/// beyond what one instance runs).
pub const TASKS_MAX_BYTES: usize = 4 << 20;

/// Fetches both documents and builds a snapshot.
pub async fn fetch(client: &reqwest::Client, base: &str) -> Result<Snapshot, IntrospectionError> {
    let base = base.trim_end_matches('/');
    let meta: Metadata = get_json(client, format!("{base}/v1/metadata"), METADATA_MAX_BYTES).await?;
    let tasks: Tasks = get_json(client, format!("{base}/v1/tasks"), TASKS_MAX_BYTES).await?;
    Ok(Snapshot::build(&meta, &tasks))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/ecs").join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn builds_labels_from_the_documented_shapes() {
        let meta: Metadata =
            serde_json::from_str(&fixture("introspection_v1_metadata.json")).expect("metadata");
        let tasks: Tasks = serde_json::from_str(&fixture("introspection_v1_tasks.json")).expect("tasks");
        let s = Snapshot::build(&meta, &tasks);
        assert_eq!(s.cluster.as_deref(), Some("flows"));
        let web = &s.containers["9a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f3021"];
        assert_eq!(web.task_family.as_deref(), Some("web"));
        assert_eq!(web.task_revision.as_deref(), Some("7"));
        assert_eq!(web.container_name.as_deref(), Some("web"));
        assert_eq!(web.network_mode.as_deref(), Some("awsvpc"));
        let worker = &s.containers["abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd"];
        assert_eq!(worker.network_mode.as_deref(), Some("bridge"), "no Networks: bridge");
    }

    #[test]
    fn malformed_documents_are_errors_not_panics() {
        for bad in ["", "{", "{\"Tasks\": [{\"Arn\": 5}]}", "null", "{\"Tasks\": [{\"Containers\": []}]}"] {
            assert!(serde_json::from_str::<Tasks>(bad).is_err(), "{bad:?} must not parse");
        }
        let empty: Tasks = serde_json::from_str("{}").expect("no tasks");
        assert!(empty.tasks.is_empty());
    }
}
