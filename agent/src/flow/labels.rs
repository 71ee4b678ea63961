//! The labels a flow record carries about its ends: `local.ecs` / `remote.ecs`
//! ([`EcsLabels`]: the ECS identity, from [`crate::ecs`]) and `remote.aws` ([`RemoteAws`]: the
//! owner of the remote address, from [`crate::aws`]). They live here, beside the record, because
//! they are part of its contract; the enrichers only fill them.

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Label value for what could not be resolved.
pub const UNKNOWN: &str = "unknown";

/// ECS labels of one end of a flow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

    /// How much a label set names, for keeping the better of two for the same socket: a
    /// container (3), only its task (2, a namespace shared by several containers), the host
    /// or an unknown cgroup (1), nothing (0). A socket's owner never changes, so its labels
    /// only get better (see [`FlowTable`](crate::table::FlowTable)).
    pub fn rank(labels: Option<&EcsLabels>) -> u8 {
        match labels {
            None => 0,
            Some(l) if l.container_id.is_some() => 3,
            Some(l) if l.task_arn.as_deref().is_some_and(|a| a != UNKNOWN) => 2,
            Some(_) => 1,
        }
    }

    /// `new`, or `old` where `old` names more (see [`EcsLabels::rank`]).
    pub fn better<'a>(new: &'a Arc<EcsLabels>, old: &'a Arc<EcsLabels>) -> &'a Arc<EcsLabels> {
        if Self::rank(Some(old)) > Self::rank(Some(new)) { old } else { new }
    }

    /// [`EcsLabels::better`] of two labels that may be missing, in place.
    pub fn keep_better(new: &mut Option<Arc<EcsLabels>>, old: &Option<Arc<EcsLabels>>) {
        if Self::rank(old.as_deref()) > Self::rank(new.as_deref()) {
            new.clone_from(old);
        }
    }
}

/// One shared copy of each distinct [`EcsLabels`] value: flow records of the same container
/// point at the same labels instead of carrying eleven strings each (a host with 100,000
/// open connections holds a few hundred distinct label sets).
///
/// Labels that are already shared (an enricher's snapshot handed out its own `Arc`) are
/// kept as they are; only freshly built ones (reference count 1) are looked up. Bounded:
/// [`Interner::prune`] forgets labels no record uses any more, and beyond [`MAX_INTERNED`]
/// distinct values new ones are left unshared (correct, only larger).
#[derive(Debug, Default)]
pub struct Interner {
    labels: HashSet<Arc<EcsLabels>>,
}

/// Distinct label sets the [`Interner`] keeps at most.
pub const MAX_INTERNED: usize = 65_536;

impl Interner {
    /// Replaces a freshly built label set by the shared copy of an equal one.
    pub fn intern(&mut self, labels: &mut Option<Arc<EcsLabels>>) {
        let Some(l) = labels else { return };
        if Arc::strong_count(l) > 1 {
            return;
        }
        match self.labels.get(l) {
            Some(shared) => *l = shared.clone(),
            None if self.labels.len() < MAX_INTERNED => {
                self.labels.insert(l.clone());
            }
            None => {}
        }
    }

    /// Forgets label sets that only the interner still holds.
    pub fn prune(&mut self) {
        self.labels.retain(|l| Arc::strong_count(l) > 1);
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_fresh_labels_share_one_copy_and_unused_ones_are_forgotten() {
        let web = || EcsLabels { task_family: Some("web".into()), ..Default::default() };
        let mut i = Interner::default();
        let mut a = Some(Arc::new(web()));
        let mut b = Some(Arc::new(web()));
        i.intern(&mut a);
        i.intern(&mut b);
        let (a, b) = (a.expect("a"), b.expect("b"));
        assert!(Arc::ptr_eq(&a, &b), "the second is the first's copy");
        assert_eq!(Arc::strong_count(&a), 3, "a, b and the interner");
        // Already shared labels (from a snapshot) are left as they are.
        let snapshot = Arc::new(web());
        let mut c = Some(snapshot.clone());
        i.intern(&mut c);
        assert!(Arc::ptr_eq(c.as_ref().expect("c"), &snapshot));
        drop((a, b));
        i.prune();
        assert!(i.is_empty(), "no record uses the interned copy any more");
    }
}
