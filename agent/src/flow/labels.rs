//! The labels a flow record carries about its ends: `local.ecs` / `remote.ecs`
//! ([`EcsLabels`]: the ECS identity, from [`crate::ecs`]) and `remote.aws` ([`RemoteAws`]: the
//! owner of the remote address, from [`crate::aws`]). They live here, beside the record, because
//! they are part of its contract; the enrichers only fill them.

use serde::{Deserialize, Serialize};

/// Label value for what could not be resolved.
pub const UNKNOWN: &str = "unknown";

/// ECS labels of one end of a flow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcsLabels {
    pub cluster: Option<String>,
    pub task_arn: Option<String>,
    pub task_family: Option<String>,
    pub task_revision: Option<String>,
    pub service: Option<String>,
    pub container_name: Option<String>,
    pub container_id: Option<String>,
    pub image: Option<String>,
    pub launch_type: Option<String>,
    pub availability_zone: Option<String>,
    pub network_mode: Option<String>,
}

impl EcsLabels {
    /// A process outside any container.
    pub fn host(cluster: Option<String>) -> Self {
        EcsLabels { cluster, container_name: Some("host".into()), ..Default::default() }
    }

    /// A container the ECS agent does not (yet) know.
    pub fn unknown_container(cluster: Option<String>, container_id: &str) -> Self {
        let u = || Some(UNKNOWN.to_string());
        EcsLabels {
            cluster,
            task_arn: u(),
            task_family: u(),
            task_revision: u(),
            container_name: u(),
            container_id: Some(container_id.to_string()),
            ..Default::default()
        }
    }
}

/// What a remote address is, for `remote.aws`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteAws {
    pub kind: OwnerKind,
    pub name: Option<String>,
    pub id: Option<String>,
    pub vpc: Option<String>,
    pub subnet: Option<String>,
    pub availability_zone: Option<String>,
}

/// The kinds of ENI owner Eddy names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerKind {
    Alb,
    Nlb,
    Gwlb,
    Clb,
    NatGateway,
    VpcEndpoint,
    Lambda,
    Efs,
    Rds,
    EcsTask,
    Ec2Instance,
    TransitGateway,
    Other,
}

impl OwnerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerKind::Alb => "alb",
            OwnerKind::Nlb => "nlb",
            OwnerKind::Gwlb => "gwlb",
            OwnerKind::Clb => "clb",
            OwnerKind::NatGateway => "nat_gateway",
            OwnerKind::VpcEndpoint => "vpc_endpoint",
            OwnerKind::Lambda => "lambda",
            OwnerKind::Efs => "efs",
            OwnerKind::Rds => "rds",
            OwnerKind::EcsTask => "ecs_task",
            OwnerKind::Ec2Instance => "ec2_instance",
            OwnerKind::TransitGateway => "transit_gateway",
            OwnerKind::Other => "other",
        }
    }
}
