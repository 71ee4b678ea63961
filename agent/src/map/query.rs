//! The query of `/api/map`: `window`, `group`, `top`, `search`, `scope`, `errors`, parsed and
//! checked (an unknown parameter or a bad value is a 400 naming it).

use std::time::Duration;

use serde::Serialize;

/// The windows a map can cover.
pub const WINDOWS: [(&str, u64); 4] = [("1m", 60), ("5m", 300), ("15m", 900), ("1h", 3600)];

/// Default and upper bound of `top` (edges shown).
pub const DEFAULT_TOP: usize = 50;
pub const MAX_TOP: usize = 1000;

/// Longest `search` accepted.
const MAX_SEARCH: usize = 200;

/// What a node stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// ECS service (the task family for tasks without a service), per cluster.
    Service,
    /// ECS task definition `family:revision`, per cluster.
    Task,
    /// Container of a task definition, per cluster.
    Container,
    /// Availability Zone.
    Az,
}

impl Group {
    pub const ALL: [(&'static str, Group); 4] = [
        ("service", Group::Service),
        ("task", Group::Task),
        ("container", Group::Container),
        ("az", Group::Az),
    ];
}

/// The scopes a map can be filtered by (the flow `scope` values).
pub const SCOPES: [&str; 5] = ["same-host", "same-az", "cross-az", "cross-vpc", "internet"];

/// A parsed `/api/map` query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapQuery {
    /// As given (`5m`).
    pub window: String,
    #[serde(skip)]
    pub window_duration: Duration,
    pub group: Group,
    pub top: usize,
    /// Case-insensitive substring of a node's name, cluster or id (either end of an edge).
    pub search: String,
    /// Only rows of this scope ("" for any).
    pub scope: String,
    /// Only edges with failed connections.
    pub errors: bool,
}

impl Default for MapQuery {
    fn default() -> Self {
        MapQuery {
            window: "5m".into(),
            window_duration: Duration::from_secs(300),
            group: Group::Service,
            top: DEFAULT_TOP,
            search: String::new(),
            scope: String::new(),
            errors: false,
        }
    }
}

/// A query parameter that was not understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("unknown parameter {0:?} (known: window, group, top, search, scope, errors)")]
    Unknown(String),
    #[error("window={0:?}: must be one of 1m, 5m, 15m, 1h")]
    Window(String),
    #[error("group={0:?}: must be one of service, task, container, az")]
    Group(String),
    #[error("top={0:?}: must be an integer from 1 to {MAX_TOP}")]
    Top(String),
    #[error("scope={0:?}: must be empty or one of same-host, same-az, cross-az, cross-vpc, internet")]
    Scope(String),
    #[error("errors={0:?}: must be true or false")]
    Errors(String),
    #[error("search is longer than {MAX_SEARCH} characters")]
    Search,
}

impl MapQuery {
    /// Parses query pairs (later values win).
    pub fn parse(pairs: &[(String, String)]) -> Result<MapQuery, QueryError> {
        let mut q = MapQuery::default();
        for (k, v) in pairs {
            match k.as_str() {
                "window" => {
                    let (name, secs) = WINDOWS
                        .iter()
                        .find(|(n, _)| *n == v.as_str())
                        .ok_or_else(|| QueryError::Window(v.clone()))?;
                    q.window = (*name).into();
                    q.window_duration = Duration::from_secs(*secs);
                }
                "group" => {
                    q.group = Group::ALL
                        .iter()
                        .find(|(n, _)| *n == v.as_str())
                        .map(|(_, g)| *g)
                        .ok_or_else(|| QueryError::Group(v.clone()))?;
                }
                "top" => {
                    q.top = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_TOP).contains(n))
                        .ok_or_else(|| QueryError::Top(v.clone()))?;
                }
                "search" => {
                    if v.chars().count() > MAX_SEARCH {
                        return Err(QueryError::Search);
                    }
                    q.search = v.trim().to_lowercase();
                }
                "scope" => {
                    if !(v.is_empty() || v == "any" || SCOPES.contains(&v.as_str())) {
                        return Err(QueryError::Scope(v.clone()));
                    }
                    q.scope = if v == "any" { String::new() } else { v.clone() };
                }
                "errors" => {
                    q.errors = match v.as_str() {
                        "true" | "1" | "on" => true,
                        "false" | "0" | "" | "off" => false,
                        _ => return Err(QueryError::Errors(v.clone())),
                    };
                }
                // The page keeps its own state in the URL; these are not the server's.
                "view" | "select" | "refresh" => {}
                other => return Err(QueryError::Unknown(other.into())),
            }
        }
        Ok(q)
    }
}
