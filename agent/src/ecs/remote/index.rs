//! The cluster's tasks as an address index, built from what the ECS and EC2 APIs
//! report ([`Discovered`]), and the lookup of a remote endpoint in it.
//!
//! Lookup order for `(protocol, ip, port)`: a host-port binding of a bridge/host-mode
//! task on a container instance's address; an awsvpc task's ENI address (the container
//! whose port matches, the only container, or `unknown`); a container instance's
//! address without a binding (the instance itself, labelled as a host of the
//! cluster). Pure and synchronous: built by the refresher, read by the data path.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::flow::EcsLabels;
use crate::flow::Protocol;
use crate::flow::labels::UNKNOWN;

/// Tasks kept per snapshot, at most (the rest are counted as truncated).
pub const MAX_TASKS: usize = 100_000;

/// One container of a discovered task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: Option<String>,
    pub runtime_id: Option<String>,
    pub image: Option<String>,
    /// `(protocol, container port, host port)` of each network binding.
    pub bindings: Vec<(Protocol, u16, Option<u16>)>,
}

/// One running task, as DescribeTasks reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskInfo {
    /// Task-level labels (no container fields).
    pub labels: EcsLabels,
    /// awsvpc ENI addresses (IPv4 and IPv6).
    pub eni_addrs: Vec<IpAddr>,
    pub container_instance_arn: Option<String>,
    pub containers: Vec<ContainerInfo>,
}

/// A container instance of the cluster and its EC2 addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceInfo {
    pub arn: String,
    pub ec2_instance_id: Option<String>,
    pub availability_zone: Option<String>,
    pub addrs: Vec<IpAddr>,
}

/// Everything one refresh discovered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovered {
    pub cluster: String,
    pub tasks: Vec<TaskInfo>,
    pub instances: Vec<InstanceInfo>,
    /// ListTasks stopped at its page cap with pages left: some running tasks are missing.
    pub list_truncated: bool,
}

/// Address → task/container, immutable once built.
#[derive(Debug, Default)]
pub struct RemoteIndex {
    tasks: Vec<TaskInfo>,
    by_eni: HashMap<IpAddr, usize>,
    by_binding: HashMap<(Protocol, IpAddr, u16), (usize, usize)>,
    instances: HashMap<IpAddr, usize>,
    instance_info: Vec<InstanceInfo>,
    by_task_arn: HashMap<String, usize>,
    cluster: String,
    /// Tasks beyond [`MAX_TASKS`] that were left out.
    pub truncated: u64,
    /// The listing this index was built from was cut at the ListTasks page cap.
    pub list_truncated: bool,
}

impl RemoteIndex {
    pub fn build(d: Discovered) -> RemoteIndex {
        let mut idx =
            RemoteIndex { cluster: d.cluster, list_truncated: d.list_truncated, ..Default::default() };
        for (i, inst) in d.instances.into_iter().enumerate() {
            for a in &inst.addrs {
                idx.instances.insert(*a, i);
            }
            idx.instance_info.push(inst);
        }
        let arn_to_instance: HashMap<&str, usize> =
            idx.instance_info.iter().enumerate().map(|(i, x)| (x.arn.as_str(), i)).collect();
        let mut bindings = Vec::new();
        for (t, mut task) in d.tasks.into_iter().enumerate() {
            if t >= MAX_TASKS {
                idx.truncated += 1;
                continue;
            }
            let inst = task.container_instance_arn.as_deref().and_then(|a| arn_to_instance.get(a).copied());
            if task.labels.availability_zone.is_none() {
                task.labels.availability_zone =
                    inst.and_then(|i| idx.instance_info[i].availability_zone.clone());
            }
            for a in &task.eni_addrs {
                idx.by_eni.insert(*a, t);
            }
            if let Some(i) = inst {
                for (c, container) in task.containers.iter().enumerate() {
                    for &(proto, _, host_port) in &container.bindings {
                        if let Some(hp) = host_port {
                            for a in &idx.instance_info[i].addrs {
                                bindings.push(((proto, *a, hp), (t, c)));
                            }
                        }
                    }
                }
            }
            if let Some(arn) = &task.labels.task_arn {
                idx.by_task_arn.insert(arn.clone(), t);
            }
            idx.tasks.push(task);
        }
        idx.by_binding = bindings.into_iter().collect();
        idx
    }

    pub fn tasks(&self) -> usize {
        self.tasks.len()
    }

    pub fn instances(&self) -> usize {
        self.instance_info.len()
    }

    /// Addresses indexed (ENIs, instance addresses, host-port bindings).
    pub fn addresses(&self) -> usize {
        self.by_eni.len() + self.instances.len() + self.by_binding.len()
    }

    /// Labels of the task (and container) behind a remote endpoint, if it is one of the cluster's.
    pub fn lookup(&self, proto: Protocol, ip: IpAddr, port: u16) -> Option<EcsLabels> {
        if let Some(&(t, c)) = self.by_binding.get(&(proto, ip, port)) {
            return Some(with_container(&self.tasks[t].labels, Some(&self.tasks[t].containers[c])));
        }
        if let Some(&t) = self.by_eni.get(&ip) {
            let task = &self.tasks[t];
            let by_port: Vec<&ContainerInfo> = task
                .containers
                .iter()
                .filter(|c| c.bindings.iter().any(|&(p, cp, _)| p == proto && cp == port))
                .collect();
            let container = match (by_port.as_slice(), task.containers.as_slice()) {
                ([one], _) => Some(*one),
                ([], [one]) => Some(one),
                _ => None,
            };
            return Some(with_container(&task.labels, container));
        }
        let &i = self.instances.get(&ip)?;
        let mut host = EcsLabels::host(Some(self.cluster.clone()));
        host.availability_zone = self.instance_info[i].availability_zone.clone();
        Some(host)
    }

    /// Fills what only the ECS API knows (service, availability zone) into labels of a
    /// task it reports, e.g. the local labels from the ECS agent.
    /// Labels already complete stay shared; others are copied once and filled.
    pub fn complete(&self, labels: &mut std::sync::Arc<EcsLabels>) {
        let Some(&t) = labels.task_arn.as_ref().and_then(|a| self.by_task_arn.get(a)) else { return };
        let known = &self.tasks[t].labels;
        let service = labels.service.is_none() && known.service.is_some();
        let zone = labels.availability_zone.is_none() && known.availability_zone.is_some();
        if !(service || zone) {
            return;
        }
        let labels = std::sync::Arc::make_mut(labels);
        if service {
            labels.service = known.service.clone();
        }
        if zone {
            labels.availability_zone = known.availability_zone.clone();
        }
    }
}

fn with_container(task: &EcsLabels, c: Option<&ContainerInfo>) -> EcsLabels {
    let mut l = task.clone();
    let unknown = || Some(UNKNOWN.to_string());
    l.container_name = c.map_or_else(unknown, |c| c.name.clone());
    l.container_id = c.and_then(|c| c.runtime_id.clone());
    l.image = c.and_then(|c| c.image.clone());
    l
}

/// `family` and `revision` from a task definition ARN (`…:task-definition/web:7`).
pub fn family_revision(task_definition_arn: &str) -> (Option<String>, Option<String>) {
    let name = task_definition_arn.rsplit('/').next().unwrap_or(task_definition_arn);
    match name.rsplit_once(':') {
        Some((f, r)) if !f.is_empty() && r.parse::<u32>().is_ok() => (Some(f.into()), Some(r.into())),
        _ => (Some(name.to_string()).filter(|n| !n.is_empty()), None),
    }
}

/// The service name from a task's `group` (`service:NAME`).
pub fn service_of(group: &str) -> Option<String> {
    group.strip_prefix("service:").filter(|s| !s.is_empty()).map(str::to_string)
}

/// The region of an ARN (`arn:PARTITION:SERVICE:REGION:…`).
pub fn region_of(arn: &str) -> Option<String> {
    let mut parts = arn.split(':');
    (parts.next() == Some("arn")).then_some(())?;
    parts.nth(2).filter(|r| !r.is_empty()).map(str::to_string)
}

#[cfg(test)]
mod tests;
