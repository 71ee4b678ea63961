//! The task metadata endpoint v4 (`$ECS_CONTAINER_METADATA_URI_V4/task`) as AWS
//! documents it, and the snapshot built from it: the task's labels, its own
//! addresses, and which container owns which port.
//!
//! Bad input (malformed JSON, HTTP errors, stalls) is an error the refresher counts
//! and backs off from; the previous snapshot stays in use.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use serde::Deserialize;

use super::fetch::{FetchError, get_json};
use crate::flow::EcsLabels;
use crate::flow::labels::UNKNOWN;

/// `GET ${ECS_CONTAINER_METADATA_URI_V4}/task`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct TaskDocument {
    pub cluster: Option<String>,
    #[serde(rename = "TaskARN")]
    pub task_arn: String,
    pub family: Option<String>,
    pub revision: Option<String>,
    pub availability_zone: Option<String>,
    pub launch_type: Option<String>,
    pub service_name: Option<String>,
    #[serde(default)]
    pub containers: Vec<ContainerDocument>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerDocument {
    pub docker_id: Option<String>,
    pub name: Option<String>,
    pub image: Option<String>,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    #[serde(default)]
    pub networks: Vec<NetworkDocument>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct PortMapping {
    pub container_port: u16,
    pub protocol: Option<String>,
    pub host_port: Option<u16>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkDocument {
    pub network_mode: Option<String>,
    #[serde(rename = "IPv4Addresses", default)]
    pub ipv4_addresses: Vec<String>,
    #[serde(rename = "IPv6Addresses", default)]
    pub ipv6_addresses: Vec<String>,
}

/// What the enricher reads: labels of the task and of the containers that own ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSnapshot {
    /// The task's labels with container fields `unknown`.
    pub task: EcsLabels,
    /// TCP port → labels of the one container whose port mappings list it.
    pub ports: HashMap<u16, EcsLabels>,
    /// The task ENI's addresses (loopback is always the task's own, too).
    pub addresses: HashSet<IpAddr>,
    pub containers: usize,
}

impl TaskSnapshot {
    /// Labels before the first successful refresh: everything `unknown`.
    pub fn unknown(launch_type: &str) -> TaskSnapshot {
        let u = || Some(UNKNOWN.to_string());
        TaskSnapshot {
            task: EcsLabels {
                cluster: u(),
                task_arn: u(),
                task_family: u(),
                task_revision: u(),
                container_name: u(),
                launch_type: Some(launch_type.into()),
                ..Default::default()
            },
            ports: HashMap::new(),
            addresses: HashSet::new(),
            containers: 0,
        }
    }

    pub fn build(doc: &TaskDocument) -> TaskSnapshot {
        let network_mode = doc
            .containers
            .iter()
            .flat_map(|c| &c.networks)
            .find_map(|n| n.network_mode.clone())
            .unwrap_or_else(|| "awsvpc".into());
        let u = || Some(UNKNOWN.to_string());
        let task = EcsLabels {
            cluster: doc.cluster.as_deref().map(cluster_name),
            task_arn: Some(doc.task_arn.clone()),
            task_family: doc.family.clone().or_else(u),
            task_revision: doc.revision.clone().or_else(u),
            service: doc.service_name.clone(),
            container_name: u(),
            container_id: None,
            image: None,
            launch_type: doc.launch_type.clone().or_else(|| Some("FARGATE".into())),
            availability_zone: doc.availability_zone.clone(),
            network_mode: Some(network_mode),
        };
        let mut ports: HashMap<u16, EcsLabels> = HashMap::new();
        let mut ambiguous: HashSet<u16> = HashSet::new();
        for c in &doc.containers {
            let tcp = c.ports.iter().filter(|p| p.protocol.as_deref().is_none_or(|p| p == "tcp"));
            for port in tcp.map(|p| p.container_port).collect::<HashSet<_>>() {
                let labels = EcsLabels {
                    container_name: c.name.clone().or_else(u),
                    container_id: c.docker_id.clone(),
                    image: c.image.clone(),
                    ..task.clone()
                };
                if ports.insert(port, labels).is_some() {
                    ambiguous.insert(port);
                }
            }
        }
        for p in ambiguous {
            ports.remove(&p);
        }
        let addresses = doc
            .containers
            .iter()
            .flat_map(|c| &c.networks)
            .flat_map(|n| n.ipv4_addresses.iter().chain(&n.ipv6_addresses))
            .filter_map(|a| a.parse().ok())
            .collect();
        TaskSnapshot { task, ports, addresses, containers: doc.containers.len() }
    }

    /// Labels of the task end that uses local `port` (TCP).
    pub fn labels_for_port(&self, port: u16) -> EcsLabels {
        self.ports.get(&port).cloned().unwrap_or_else(|| self.task.clone())
    }

    /// Whether `addr` is one of the task's own addresses.
    pub fn is_own(&self, addr: IpAddr) -> bool {
        addr.is_loopback() || self.addresses.contains(&addr)
    }
}

/// `arn:aws:ecs:region:account:cluster/NAME` → `NAME` (a plain name stays as it is).
fn cluster_name(c: &str) -> String {
    c.rsplit_once(":cluster/").map_or(c, |(_, name)| name).to_string()
}

/// Why a refresh failed.
pub type TaskMetadataError = FetchError;

/// Counter names in `/status`, by failure.
pub const ERROR_KINDS: [&str; 4] = [
    "task_metadata_unreachable",
    "task_metadata_http_errors",
    "task_metadata_malformed_responses",
    "task_metadata_oversized_responses",
];

/// Largest `/task` body read (1 MiB: one task of at most a few dozen containers).
pub const TASK_MAX_BYTES: usize = 1 << 20;

/// Fetches `{base}/task` and builds a snapshot.
pub async fn fetch(client: &reqwest::Client, base: &str) -> Result<TaskSnapshot, TaskMetadataError> {
    let doc: TaskDocument =
        get_json(client, format!("{}/task", base.trim_end_matches('/')), TASK_MAX_BYTES).await?;
    Ok(TaskSnapshot::build(&doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/ecs").join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn fargate_task_document_gives_task_labels_and_addresses() {
        let doc: TaskDocument = serde_json::from_str(&fixture("tmds_v4_task_fargate.json")).expect("doc");
        let s = TaskSnapshot::build(&doc);
        let t = &s.task;
        assert_eq!(t.cluster.as_deref(), Some("flows"));
        assert_eq!(
            t.task_arn.as_deref(),
            Some("arn:aws:ecs:us-east-1:123456789012:task/flows/0123456789abcdef0123456789abcdef")
        );
        assert_eq!((t.task_family.as_deref(), t.task_revision.as_deref()), (Some("api"), Some("3")));
        assert_eq!(t.launch_type.as_deref(), Some("FARGATE"));
        assert_eq!(t.availability_zone.as_deref(), Some("us-east-1b"));
        assert_eq!(t.network_mode.as_deref(), Some("awsvpc"));
        assert_eq!(t.service.as_deref(), Some("api"));
        assert!(s.is_own("10.0.2.200".parse().expect("ip")));
        assert!(s.is_own("127.0.0.1".parse().expect("ip")));
        assert!(!s.is_own("10.0.2.201".parse().expect("ip")));
        // No port mappings in the document: the owning container is unknown.
        assert_eq!(s.labels_for_port(80).container_name.as_deref(), Some(UNKNOWN));
    }

    #[test]
    fn port_owner_only_when_unambiguous() {
        let doc: TaskDocument = serde_json::from_str(&fixture("tmds_v4_task_ec2_awsvpc.json")).expect("doc");
        let s = TaskSnapshot::build(&doc);
        let web = s.labels_for_port(8080);
        assert_eq!(web.container_name.as_deref(), Some("web"));
        assert!(web.image.is_some() && web.container_id.is_some());
        assert_eq!(web.task_family, s.task.task_family);
        let mut doc = doc;
        let mut twin = doc.containers[0].clone();
        twin.ports =
            vec![PortMapping { container_port: 8080, protocol: Some("tcp".into()), host_port: None }];
        twin.name = Some("twin".into());
        doc.containers.push(twin);
        let s = TaskSnapshot::build(&doc);
        assert_eq!(s.labels_for_port(8080).container_name.as_deref(), Some(UNKNOWN), "two owners");
    }

    #[test]
    fn malformed_documents_are_errors_not_panics() {
        let good = fixture("tmds_v4_task_fargate.json");
        for bad in ["", "{", "null", "[]", "{\"TaskARN\": 5}", "{\"Family\": \"x\"}", &good[..good.len() / 2]]
        {
            assert!(serde_json::from_str::<TaskDocument>(bad).is_err(), "{bad:?} must not parse");
        }
        let minimal: TaskDocument = serde_json::from_str("{\"TaskARN\": \"arn:x\"}").expect("minimal");
        let s = TaskSnapshot::build(&minimal);
        assert_eq!(s.task.task_family.as_deref(), Some(UNKNOWN));
        assert_eq!(s.task.launch_type.as_deref(), Some("FARGATE"));
    }

    #[test]
    fn unknown_snapshot_labels_everything_unknown() {
        let s = TaskSnapshot::unknown("FARGATE");
        assert_eq!(s.labels_for_port(1).task_family.as_deref(), Some(UNKNOWN));
        assert_eq!(s.task.launch_type.as_deref(), Some("FARGATE"));
        assert!(s.is_own("::1".parse().expect("ip")));
    }
}
