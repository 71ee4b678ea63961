//! Which node each end of a series is, at the chosen grouping, and the label matchers that
//! select it in PromQL.
//!
//! - An ECS end (a service, or a task family other than `unknown`) is a `service` node: named
//!   by its service (else its task family) for `group=service`, by `family:revision` for
//!   `task`, by `family:revision/container` for `container`, each within its cluster.
//! - A remote end without an ECS name but with an AWS resource is an `aws` node
//!   (`kind/name`, e.g. an ALB or a NAT gateway).
//! - Otherwise a remote end is `internet` (scope `internet`) or `unknown`; a local end with no
//!   ECS name is `unknown` too (no ECS on this host, or no `workloads` in `series_labels`).
//! - `group=az`: every end whose zone is known is the node of its zone; AWS resources and
//!   `internet` stay what they are.
//! - The folded `other` series is the `other` node.

use serde::Serialize;

use super::query::Group;
use crate::aggregate::SeriesKey;
use crate::flow::labels::UNKNOWN;

/// What a node stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Service,
    Aws,
    Az,
    Internet,
    Unknown,
}

/// One label matcher of a node (`local_`/`remote_` prefix added by the caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matcher {
    /// Label name without its `local_`/`remote_` prefix (`service`, `task`, ...), or a full
    /// name when `whole` is set (`scope`).
    pub label: &'static str,
    pub whole: bool,
    /// `=` or `=~`.
    pub op: &'static str,
    pub value: String,
}

/// One end of a series as a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct End {
    pub id: String,
    pub kind: NodeKind,
    pub label: String,
    pub cluster: Option<String>,
    /// The end's zone in this series (a node may have several).
    pub az: Option<String>,
    pub aws_kind: Option<String>,
    pub matchers: Vec<Matcher>,
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn eq(label: &'static str, value: &str) -> Matcher {
    Matcher { label, whole: false, op: "=", value: value.into() }
}

fn simple(id: &str, kind: NodeKind, label: &str, az: Option<String>, matchers: Vec<Matcher>) -> End {
    End { id: id.into(), kind, label: label.into(), cluster: None, az, aws_kind: None, matchers }
}

/// The identity labels of one end of a key.
struct Side<'a> {
    cluster: &'a str,
    service: &'a str,
    task: &'a str,
    container: &'a str,
    az: &'a str,
}

fn named(s: &Side<'_>) -> bool {
    !s.service.is_empty() || (!s.task.is_empty() && s.task != UNKNOWN)
}

/// The ECS node of a named side.
fn ecs_end(s: &Side<'_>, group: Group) -> End {
    let family = s.task.split_once(':').map_or(s.task, |(f, _)| f);
    let (prefix, name, mut matchers) = match group {
        Group::Service if !s.service.is_empty() => {
            ("service", s.service.to_string(), vec![eq("service", s.service)])
        }
        Group::Service => {
            ("service", family.to_string(), vec![eq("service", ""), family_matcher(s.task, family)])
        }
        Group::Task => ("task", s.task.to_string(), vec![eq("task", s.task)]),
        // (`Az` never gets here: zones are nodes of their own.)
        Group::Container | Group::Az => {
            let name = if s.container.is_empty() {
                s.task.to_string()
            } else {
                format!("{}/{}", s.task, s.container)
            };
            ("container", name, vec![eq("task", s.task), eq("container", s.container)])
        }
    };
    matchers.insert(0, eq("cluster", s.cluster));
    End {
        id: format!("{prefix}:{}/{name}", s.cluster),
        kind: NodeKind::Service,
        label: name,
        cluster: non_empty(s.cluster),
        az: non_empty(s.az),
        aws_kind: None,
        matchers,
    }
}

/// `task` matches every revision of `family` (or exactly `task` when it has no revision).
fn family_matcher(task: &str, family: &str) -> Matcher {
    if task.contains(':') {
        Matcher { label: "task", whole: false, op: "=~", value: format!("{}:.*", regex_escape(family)) }
    } else {
        eq("task", task)
    }
}

/// Escapes RE2 metacharacters.
pub fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The node of a zone (`az:unknown` for an ECS end whose zone is not known).
fn az_end(az: &str) -> End {
    let name = if az.is_empty() { UNKNOWN } else { az };
    simple(&format!("az:{name}"), NodeKind::Az, name, non_empty(az), vec![eq("az", az)])
}

fn other() -> End {
    simple(
        "other",
        NodeKind::Unknown,
        "other",
        None,
        vec![Matcher { label: "server_port", whole: true, op: "=", value: "other".into() }],
    )
}

/// The local end of `k`.
pub fn local(k: &SeriesKey, group: Group) -> End {
    if k.is_other() {
        return other();
    }
    let s = Side {
        cluster: &k.local_cluster,
        service: &k.local_service,
        task: &k.local_task,
        container: &k.local_container,
        az: &k.local_az,
    };
    if group == Group::Az && (named(&s) || !s.az.is_empty()) {
        return az_end(s.az);
    }
    if named(&s) {
        return ecs_end(&s, group);
    }
    simple("unknown", NodeKind::Unknown, "unknown", non_empty(s.az), vec![eq("task", ""), eq("service", "")])
}

/// The remote end of `k`.
pub fn remote(k: &SeriesKey, group: Group) -> End {
    if k.is_other() {
        return other();
    }
    let s = Side {
        cluster: &k.remote_cluster,
        service: &k.remote_service,
        task: &k.remote_task,
        container: &k.remote_container,
        az: &k.remote_az,
    };
    let internet = k.scope == "internet";
    if group == Group::Az && (named(&s) || !s.az.is_empty()) && k.remote_kind.is_empty() && !internet {
        return az_end(s.az);
    }
    if named(&s) {
        return ecs_end(&s, group);
    }
    if !k.remote_kind.is_empty() {
        let name = if k.remote_name.is_empty() { UNKNOWN } else { &k.remote_name };
        return End {
            id: format!("aws:{}/{name}", k.remote_kind),
            kind: NodeKind::Aws,
            label: name.into(),
            cluster: None,
            az: non_empty(s.az),
            aws_kind: Some(k.remote_kind.clone()),
            matchers: vec![eq("kind", &k.remote_kind), eq("name", &k.remote_name)],
        };
    }
    let none = vec![eq("task", ""), eq("service", ""), eq("kind", "")];
    if internet {
        let mut m = none;
        m.push(Matcher { label: "scope", whole: true, op: "=", value: "internet".into() });
        return simple("internet", NodeKind::Internet, "internet", None, m);
    }
    simple("unknown", NodeKind::Unknown, "unknown", non_empty(s.az), none)
}
