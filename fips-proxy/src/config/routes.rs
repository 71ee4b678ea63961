//! The route table: which local port goes to which TLS upstream, and how.
//!
//! A route's upstream is a URL: `https://host:port` for HTTP routes (the proxy reads each
//! request head, rewrites `Host`, and answers 502/503 itself on upstream failures) or
//! `tls://host:port` for raw TCP routes (bytes are relayed untouched; failures close the
//! client connection). The port defaults to 443. Two optional query parameters:
//! `server_name` (SNI and the name the certificate must carry; default: the host) and
//! `ca_file` (PEM bundle of trusted roots; default: the system roots).
//!
//! In the environment the table is `name=url` entries separated by `;`:
//! `EDDY_FIPS_ROUTES=otlp=https://collector.example:4318;syslog=tls://logs.example:6514?ca_file=/ca.pem`.
//! In the TOML file it is `[[routes]]` tables with `name`, `upstream`, and optionally
//! `server_name` and `ca_file`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Name of the default route (Eddy's own OTLP egress).
pub const DEFAULT_ROUTE: &str = "otlp";

/// Why a route entry is unusable.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("route entry {0:?} is not name=url (example: otlp=https://collector.example:4318)")]
    Entry(String),
    #[error("route {name}: upstream {url:?}: {reason}")]
    Upstream { name: String, url: String, reason: String },
    #[error("route name {0:?}: use 1-32 letters, digits, '-' or '_'")]
    Name(String),
    #[error("route {0} appears twice")]
    Duplicate(String),
    #[error("route {name}: {reason}")]
    Option { name: String, reason: String },
}

/// How a route treats the bytes it relays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// HTTP/1.1: `Host` rewritten, one request per client connection, 502/503 answers.
    Http,
    /// Raw TCP inside TLS.
    Tcp,
}

/// One route as configured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Name in logs and in the status JSON.
    pub name: String,
    /// `https://host[:port]` or `tls://host[:port]`; absent only for the unconfigured default route.
    #[serde(default)]
    pub upstream: Option<String>,
    /// SNI and certificate name (default: the upstream host).
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM file of trusted root certificates (default: the system roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// A parsed upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub kind: RouteKind,
    pub host: String,
    pub port: u16,
    /// SNI and verified certificate name.
    pub server_name: String,
    pub ca_file: Option<PathBuf>,
}

impl Upstream {
    /// `host:port` to connect to.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The `Host` header value sent upstream.
    pub fn host_header(&self) -> String {
        if self.port == 443 {
            self.server_name.clone()
        } else {
            format!("{}:{}", self.server_name, self.port)
        }
    }
}

impl RouteSpec {
    /// The parsed upstream, or `None` for an unconfigured route.
    pub fn parse_upstream(&self) -> Result<Option<Upstream>, RouteError> {
        let Some(url) = self.upstream.as_deref() else { return Ok(None) };
        let err = |reason: &str| RouteError::Upstream {
            name: self.name.clone(),
            url: super::redact::url(url),
            reason: reason.to_string(),
        };
        let (kind, rest) = if let Some(r) = url.strip_prefix("https://") {
            (RouteKind::Http, r)
        } else if let Some(r) = url.strip_prefix("tls://") {
            (RouteKind::Tcp, r)
        } else {
            return Err(err(
                "expected https://host[:port] (HTTP route) or tls://host[:port] (raw TCP route)",
            ));
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') || authority.contains('?') || authority.contains('@') {
            return Err(err("only scheme://host[:port] is allowed (no path, query or user info)"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| err("bad host[:port]"))?;
        if host.is_empty() {
            return Err(err("missing host"));
        }
        let server_name = self.server_name.clone().unwrap_or_else(|| host.clone());
        if rustls_pki_types::ServerName::try_from(server_name.as_str()).is_err() {
            return Err(RouteError::Option {
                name: self.name.clone(),
                reason: format!("server_name {server_name:?} is not a DNS name or IP address"),
            });
        }
        Ok(Some(Upstream { kind, host, port, server_name, ca_file: self.ca_file.clone() }))
    }
}

fn split_host_port(authority: &str) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 443,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host.to_string(), port.parse().ok()?)),
        Some(_) => None,
        None => Some((authority.to_string(), 443)),
    }
}

/// Parses `name=url[?server_name=..&ca_file=..];...`.
pub fn parse_table(text: &str) -> Result<Vec<RouteSpec>, RouteError> {
    let mut out = Vec::new();
    for entry in text.split([';', '\n']).map(str::trim).filter(|e| !e.is_empty()) {
        let (name, url) =
            entry.split_once('=').ok_or_else(|| RouteError::Entry(super::redact::url(entry)))?;
        let name = name.trim().to_string();
        let (url, query) = match url.split_once('?') {
            Some((u, q)) => (u.trim(), Some(q)),
            None => (url.trim(), None),
        };
        let mut spec = RouteSpec {
            name: name.clone(),
            upstream: Some(url.to_string()),
            server_name: None,
            ca_file: None,
        };
        for pair in query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("server_name", v)) => spec.server_name = Some(v.to_string()),
                Some(("ca_file", v)) => spec.ca_file = Some(PathBuf::from(v)),
                _ => {
                    // The key only: the value may be a credential (an OTLP URL's `api_key=`).
                    let key = pair.split_once('=').map_or("(a bare value)", |(k, _)| k);
                    return Err(RouteError::Option {
                        name,
                        reason: format!("unknown option {key:?}: use server_name=NAME or ca_file=PATH"),
                    });
                }
            }
        }
        out.push(spec);
    }
    Ok(out)
}

/// The default route: `otlp`, to `upstream` when given.
pub fn default_otlp_route(upstream: Option<&str>) -> Result<RouteSpec, RouteError> {
    match upstream {
        Some(text) => {
            let text = strip_otlp_path(text);
            let mut table = parse_table(&format!("{DEFAULT_ROUTE}={text}"))?;
            table.pop().ok_or_else(|| RouteError::Entry(super::redact::url(&text)))
        }
        None => Ok(RouteSpec {
            name: DEFAULT_ROUTE.to_string(),
            upstream: None,
            server_name: None,
            ca_file: None,
        }),
    }
}

/// `otlp_upstream` may be the agent's own OTLP URL (`https://host:port/v1/metrics`): the path is
/// what the agent sends, so only the origin (and any `?options`) is kept.
fn strip_otlp_path(text: &str) -> String {
    let Some(rest) = text.strip_prefix("https://") else { return text.to_string() };
    let (before_opts, opts) = rest.split_once('?').map_or((rest, None), |(a, b)| (a, Some(b)));
    let origin = before_opts.split_once('/').map_or(before_opts, |(a, _)| a);
    match opts {
        Some(o) => format!("https://{origin}?{o}"),
        None => format!("https://{origin}"),
    }
}

/// Names are unique and well formed; every upstream parses.
pub fn check_table(routes: &[RouteSpec]) -> Result<(), RouteError> {
    for (i, r) in routes.iter().enumerate() {
        let ok_name = !r.name.is_empty()
            && r.name.len() <= 32
            && r.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok_name {
            return Err(RouteError::Name(r.name.clone()));
        }
        if routes[..i].iter().any(|o| o.name == r.name) {
            return Err(RouteError::Duplicate(r.name.clone()));
        }
        r.parse_upstream()?;
    }
    Ok(())
}
