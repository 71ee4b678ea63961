//! The series key: which labels of a flow make a series, chosen by `series_labels`.
//!
//! Always in the key: `protocol`, `family`, `direction` and `server_port`. The label groups
//! ([`LabelGroup`]) add the rest: the ECS workloads of both ends (cluster, service, task
//! `family:revision`, container), the flow's `scope`, both ends' Availability Zones, the remote
//! AWS resource (`kind`, `name`), and the addresses — always, or only for an end that has no
//! name ([`LabelGroup::UnnamedAddresses`], the default), so that a service talking to a named
//! peer makes one series however many tasks and addresses either side has.
//!
//! Labels are read from the flow record's `local.ecs`, `remote.ecs`, `remote.aws` and `scope`
//! (always through `as_deref()`); the local Availability Zone falls back to this host's (from
//! enhanced resolution's identity) when the ECS labels do not carry it.

use serde::Serialize;

use super::OTHER;
use crate::flow::labels::UNKNOWN;
use crate::flow::{Direction, EcsLabels, Family, FlowRecord, Protocol};

/// A group of series labels, as named in `series_labels`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelGroup {
    /// `local_cluster`, `local_service`, `local_task`, `local_container` and the `remote_*` ones.
    Workloads,
    /// `scope`.
    Scope,
    /// `local_az`, `remote_az`.
    Az,
    /// `remote_kind`, `remote_name` (the remote AWS resource, from enhanced resolution).
    RemoteResource,
    /// `local_addr`, `remote_addr`, always.
    Addresses,
    /// `local_addr` / `remote_addr` only for an end without a name (no ECS task or service,
    /// and for the remote end no named AWS resource either).
    UnnamedAddresses,
}

impl LabelGroup {
    /// Every group with its name in the configuration.
    pub const ALL: [(&'static str, LabelGroup); 6] = [
        ("workloads", LabelGroup::Workloads),
        ("scope", LabelGroup::Scope),
        ("az", LabelGroup::Az),
        ("remote_resource", LabelGroup::RemoteResource),
        ("addresses", LabelGroup::Addresses),
        ("unnamed_addresses", LabelGroup::UnnamedAddresses),
    ];

    /// The group named `name`, if any.
    pub fn parse(name: &str) -> Option<LabelGroup> {
        LabelGroup::ALL.iter().find(|(n, _)| *n == name.trim()).map(|(_, g)| *g)
    }
}

/// The default of `series_labels`.
pub const DEFAULT_GROUPS: [&str; 5] = ["workloads", "scope", "az", "remote_resource", "unnamed_addresses"];

/// The label groups in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelGroups {
    pub workloads: bool,
    pub scope: bool,
    pub az: bool,
    pub remote_resource: bool,
    pub addresses: bool,
    pub unnamed_addresses: bool,
}

impl LabelGroups {
    /// Parses `series_labels`; the error names the unknown group and the known ones.
    pub fn parse(names: &[String]) -> Result<LabelGroups, String> {
        let mut g = LabelGroups {
            workloads: false,
            scope: false,
            az: false,
            remote_resource: false,
            addresses: false,
            unnamed_addresses: false,
        };
        for name in names {
            let group = LabelGroup::parse(name).ok_or_else(|| {
                let known: Vec<&str> = LabelGroup::ALL.iter().map(|(n, _)| *n).collect();
                format!("series_labels: unknown label group {name:?}; known: {}", known.join(", "))
            })?;
            match group {
                LabelGroup::Workloads => g.workloads = true,
                LabelGroup::Scope => g.scope = true,
                LabelGroup::Az => g.az = true,
                LabelGroup::RemoteResource => g.remote_resource = true,
                LabelGroup::Addresses => g.addresses = true,
                LabelGroup::UnnamedAddresses => g.unnamed_addresses = true,
            }
        }
        Ok(g)
    }
}

impl Default for LabelGroups {
    fn default() -> Self {
        let names: Vec<String> = DEFAULT_GROUPS.iter().map(|s| s.to_string()).collect();
        LabelGroups::parse(&names).unwrap_or(LabelGroups {
            workloads: true,
            scope: true,
            az: true,
            remote_resource: true,
            addresses: false,
            unnamed_addresses: true,
        })
    }
}

/// Series labels. Empty strings are absent labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SeriesKey {
    pub protocol: Protocol,
    pub family: Family,
    pub direction: Direction,
    pub local_addr: String,
    pub remote_addr: String,
    pub server_port: String,
    /// `same-host`, `same-az`, `cross-az`, `cross-vpc`, `internet` (empty: unknown).
    pub scope: String,
    pub local_cluster: String,
    pub local_service: String,
    /// ECS task `family:revision` of the local end (`host`, `unknown`; empty without ECS).
    pub local_task: String,
    /// ECS container name of the local end (empty without ECS).
    pub local_container: String,
    pub local_az: String,
    pub remote_cluster: String,
    pub remote_service: String,
    /// The same for the remote end, when it is known (intra-host peers, the ECS API).
    pub remote_task: String,
    pub remote_container: String,
    pub remote_az: String,
    /// Remote AWS resource kind (`alb`, `nat_gateway`, ...; enhanced resolution).
    pub remote_kind: String,
    pub remote_name: String,
}

/// `family:revision` and container name from ECS labels ("" when absent).
pub fn workload(l: Option<&EcsLabels>) -> (String, String) {
    let Some(l) = l else { return (String::new(), String::new()) };
    let task = match (&l.task_family, &l.task_revision) {
        (Some(f), Some(r)) if f != UNKNOWN => format!("{f}:{r}"),
        (Some(f), _) => f.clone(),
        (None, _) => l.container_name.clone().unwrap_or_default(),
    };
    (task, l.container_name.clone().unwrap_or_default())
}

/// Whether an end has a name of its own: an ECS service, or a task family other than `unknown`.
pub fn ecs_named(l: Option<&EcsLabels>) -> bool {
    l.is_some_and(|l| {
        l.service.as_deref().is_some_and(|s| !s.is_empty())
            || l.task_family.as_deref().is_some_and(|f| !f.is_empty() && f != UNKNOWN)
    })
}

/// Whether the remote end is named (ECS, or a named AWS resource).
pub fn remote_named(r: &FlowRecord) -> bool {
    ecs_named(r.remote.ecs.as_deref())
        || r.remote.aws.as_deref().is_some_and(|a| a.name.as_deref().is_some_and(|n| !n.is_empty()))
}

/// The local end's Availability Zone: its ECS labels', else this host's.
pub fn local_az(r: &FlowRecord, host_az: Option<&str>) -> String {
    r.local.ecs.as_deref().and_then(|l| l.availability_zone.as_deref()).or(host_az).unwrap_or_default().into()
}

/// The remote end's Availability Zone: its ECS labels', else its ENI's.
pub fn remote_az(r: &FlowRecord) -> String {
    let ecs = r.remote.ecs.as_deref().and_then(|l| l.availability_zone.as_deref());
    let aws = r.remote.aws.as_deref().and_then(|a| a.availability_zone.as_deref());
    ecs.or(aws).unwrap_or_default().into()
}

/// Lower-case serde name of a label enum.
pub fn label<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

impl SeriesKey {
    /// The key of `r` with every group on (addresses always).
    pub fn of(r: &FlowRecord) -> Self {
        let all = LabelGroups {
            workloads: true,
            scope: true,
            az: true,
            remote_resource: true,
            addresses: true,
            unnamed_addresses: false,
        };
        SeriesKey::with(r, all, None)
    }

    /// The key of `r` under `groups`; `host_az` is this host's zone, if known.
    pub fn with(r: &FlowRecord, groups: LabelGroups, host_az: Option<&str>) -> Self {
        let server_port = super::interval::server_port(r);
        let mut k = SeriesKey::bare(r.protocol, r.family, r.direction, server_port.to_string());
        let (local, remote) = (r.local.ecs.as_deref(), r.remote.ecs.as_deref());
        let unnamed = groups.unnamed_addresses;
        if groups.addresses || (unnamed && !ecs_named(local)) {
            k.local_addr = r.local.addr.to_string();
        }
        if groups.addresses || (unnamed && !remote_named(r)) {
            k.remote_addr = r.remote.addr.to_string();
        }
        if groups.scope {
            k.scope = r.scope.map(|s| label(&s)).unwrap_or_default();
        }
        if groups.workloads {
            (k.local_task, k.local_container) = workload(local);
            (k.remote_task, k.remote_container) = workload(remote);
            k.local_cluster = local.and_then(|l| l.cluster.clone()).unwrap_or_default();
            k.local_service = local.and_then(|l| l.service.clone()).unwrap_or_default();
            k.remote_cluster = remote.and_then(|l| l.cluster.clone()).unwrap_or_default();
            k.remote_service = remote.and_then(|l| l.service.clone()).unwrap_or_default();
        }
        if groups.az {
            k.local_az = local_az(r, host_az);
            k.remote_az = remote_az(r);
        }
        if groups.remote_resource
            && let Some(a) = r.remote.aws.as_deref()
        {
            k.remote_kind = a.kind.as_str().into();
            k.remote_name = a.name.clone().or_else(|| a.id.clone()).unwrap_or_default();
        }
        k
    }

    /// A key with only its protocol, family, direction and port: every other label empty.
    pub fn bare(protocol: Protocol, family: Family, direction: Direction, server_port: String) -> Self {
        let e = String::new;
        SeriesKey {
            protocol,
            family,
            direction,
            local_addr: e(),
            remote_addr: e(),
            server_port,
            scope: e(),
            local_cluster: e(),
            local_service: e(),
            local_task: e(),
            local_container: e(),
            local_az: e(),
            remote_cluster: e(),
            remote_service: e(),
            remote_task: e(),
            remote_container: e(),
            remote_az: e(),
            remote_kind: e(),
            remote_name: e(),
        }
    }

    /// Whether this is an `other` series (the fold target of its protocol/family/direction).
    pub fn is_other(&self) -> bool {
        self.server_port == OTHER
    }

    /// The `other` series of this key's protocol, family and direction: every identity label
    /// empty, the addresses and port `other`.
    pub fn other(&self) -> Self {
        SeriesKey {
            local_addr: OTHER.into(),
            remote_addr: OTHER.into(),
            ..SeriesKey::bare(self.protocol, self.family, self.direction, OTHER.into())
        }
    }

    /// `(label, value)` pairs in exposition order, empty values left out.
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        let all = [
            ("protocol", label(&self.protocol)),
            ("family", label(&self.family)),
            ("direction", label(&self.direction)),
            ("local_addr", self.local_addr.clone()),
            ("remote_addr", self.remote_addr.clone()),
            ("server_port", self.server_port.clone()),
            ("scope", self.scope.clone()),
            ("local_cluster", self.local_cluster.clone()),
            ("local_service", self.local_service.clone()),
            ("local_task", self.local_task.clone()),
            ("local_container", self.local_container.clone()),
            ("local_az", self.local_az.clone()),
            ("remote_cluster", self.remote_cluster.clone()),
            ("remote_service", self.remote_service.clone()),
            ("remote_task", self.remote_task.clone()),
            ("remote_container", self.remote_container.clone()),
            ("remote_az", self.remote_az.clone()),
            ("remote_kind", self.remote_kind.clone()),
            ("remote_name", self.remote_name.clone()),
        ];
        all.into_iter().filter(|(_, v)| !v.is_empty()).collect()
    }
}
