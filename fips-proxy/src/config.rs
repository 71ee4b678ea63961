//! Proxy configuration: defaults → optional TOML file (`--config` or `EDDY_FIPS_CONFIG`) →
//! `EDDY_FIPS_*` environment → `--set key=value` flags, each layer overriding the one before.
//! Unknown keys in the file and unknown `EDDY_FIPS_*` variables are rejected, every value is
//! validated at startup and the effective configuration is logged.
//!
//! Every scalar is settable under the same name everywhere: `idle_timeout` in the file,
//! `EDDY_FIPS_IDLE_TIMEOUT` in the environment, `--set idle_timeout=30s` as a flag. The route
//! table is `[[routes]]` in the file or `EDDY_FIPS_ROUTES` (see [`routes`]); an environment or
//! flag table replaces the file's table as a whole.
//!
//! Ports: the status port is `port_range_start`; route `i` (0-based, in table order) listens on
//! `port_range_start + 1 + i`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use eddy_common::redact;
pub mod routes;

pub use routes::{RouteKind, RouteSpec, Upstream};

/// Prefix of every environment variable the proxy reads.
pub const ENV_PREFIX: &str = "EDDY_FIPS_";
/// Environment variable naming the optional TOML file.
pub const CONFIG_FILE_ENV: &str = "EDDY_FIPS_CONFIG";

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("unknown setting {key} (from {origin}); known settings: {known}")]
    Unknown { key: String, origin: String, known: String },
    #[error("invalid value {value:?} for {key} (from {origin}): {reason}")]
    Value { key: String, value: String, origin: String, reason: String },
    #[error("invalid route table: {0}")]
    Route(#[from] routes::RouteError),
    #[error("{0}")]
    Invalid(String),
}

/// The effective configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address every port listens on. Loopback only unless `allow_non_local` is true: the
    /// local ports are plain text.
    pub local_address: IpAddr,
    /// Permit a non-loopback `local_address` (plain text leaves the host's loopback).
    pub allow_non_local: bool,
    /// First port of the range: the status port; routes follow.
    pub port_range_start: u16,
    /// Route table, in port order. Default: one `otlp` route (upstream from `otlp_upstream`).
    pub routes: Vec<RouteSpec>,
    /// Upstream of the default `otlp` route (used only when `routes` is empty).
    pub otlp_upstream: Option<String>,
    /// TCP connect plus TLS handshake limit per upstream connection (100ms–5m).
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
    /// A connection with no byte in either direction for this long is closed (100ms–24h).
    #[serde(with = "duration_text")]
    pub idle_timeout: Duration,
    /// How often each configured upstream is probed (TCP connect + TLS handshake, no request) to keep
    /// its health current without traffic; `0s` turns probing off (health is then only the outcome
    /// of the latest client connection). 1s–24h, or 0s.
    #[serde(with = "duration_text")]
    pub probe_interval: Duration,
    /// Whole life of one client connection of an HTTP route, request head to last byte (1s–24h).
    #[serde(with = "duration_text")]
    pub request_timeout: Duration,
    /// Minimum transfer rate of an HTTP route's client connection: in every consecutive
    /// `idle_timeout` window it must move at least `min_bytes_per_second × idle_timeout` bytes
    /// (both directions together), else it is closed. `0` turns the check off (0–1,000,000).
    pub min_bytes_per_second: u64,
    /// Concurrent client connections per route; more are refused (and counted).
    pub max_connections_per_route: usize,
    /// Concurrent connections to the status port; more are refused with 503 (and counted) (1–1024).
    pub max_status_connections: usize,
    /// On SIGTERM/SIGINT: how long open connections may finish before the proxy exits (0s–10m).
    #[serde(with = "duration_text")]
    pub shutdown_grace: Duration,
    /// `tracing` filter (`info`, `debug`, `eddy_fips_proxy=trace`, …).
    pub log_level: String,
    /// `text` or `json` log lines on stderr.
    pub log_format: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            local_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            allow_non_local: false,
            port_range_start: 9803,
            routes: Vec::new(),
            otlp_upstream: None,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            probe_interval: Duration::from_secs(30),
            request_timeout: Duration::from_secs(300),
            min_bytes_per_second: 16,
            max_connections_per_route: 128,
            max_status_connections: 16,
            shutdown_grace: Duration::from_secs(10),
            log_level: "info".to_string(),
            log_format: "text".to_string(),
        }
    }
}

const KNOWN: &[&str] = &[
    "local_address",
    "allow_non_local",
    "port_range_start",
    "routes",
    "otlp_upstream",
    "connect_timeout",
    "idle_timeout",
    "probe_interval",
    "request_timeout",
    "min_bytes_per_second",
    "max_connections_per_route",
    "max_status_connections",
    "shutdown_grace",
    "log_level",
    "log_format",
];

impl Config {
    /// Builds the configuration from every layer and validates it.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        let file_path = file
            .map(Path::to_path_buf)
            .or_else(|| env.iter().find(|(k, _)| k == CONFIG_FILE_ENV).map(|(_, v)| PathBuf::from(v)));
        let mut cfg = match &file_path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                toml::from_str(&text)
                    .map_err(|source| ConfigError::Parse { path: path.clone(), source: Box::new(source) })?
            }
            None => Config::default(),
        };
        for (key, value) in &env {
            if key == CONFIG_FILE_ENV {
                continue;
            }
            let name = key[ENV_PREFIX.len()..].to_ascii_lowercase();
            cfg.set(&name, value, key)?;
        }
        for (key, value) in flags {
            cfg.set(key, value, &format!("--set {key}"))?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Sets one setting from text (environment or flag).
    pub fn set(&mut self, key: &str, value: &str, origin: &str) -> Result<(), ConfigError> {
        let bad = |reason: String| ConfigError::Value {
            key: key.to_string(),
            value: value.to_string(),
            origin: origin.to_string(),
            reason,
        };
        match key {
            "local_address" => self.local_address = value.trim().parse().map_err(|e| bad(format!("{e}")))?,
            "allow_non_local" => self.allow_non_local = parse_bool(value).map_err(bad)?,
            "port_range_start" => {
                self.port_range_start = value.trim().parse().map_err(|e| bad(format!("{e}")))?
            }
            "routes" => self.routes = routes::parse_table(value)?,
            "otlp_upstream" => self.otlp_upstream = Some(value.trim().to_string()).filter(|v| !v.is_empty()),
            "connect_timeout" => self.connect_timeout = parse_duration(value).map_err(bad)?,
            "idle_timeout" => self.idle_timeout = parse_duration(value).map_err(bad)?,
            "probe_interval" => self.probe_interval = parse_duration(value).map_err(bad)?,
            "request_timeout" => self.request_timeout = parse_duration(value).map_err(bad)?,
            "min_bytes_per_second" => {
                self.min_bytes_per_second = value.trim().parse().map_err(|e| bad(format!("{e}")))?
            }
            "max_status_connections" => {
                self.max_status_connections = value.trim().parse().map_err(|e| bad(format!("{e}")))?
            }
            "shutdown_grace" => self.shutdown_grace = parse_duration(value).map_err(bad)?,
            "max_connections_per_route" => {
                self.max_connections_per_route = value.trim().parse().map_err(|e| bad(format!("{e}")))?
            }
            "log_level" => self.log_level = value.trim().to_string(),
            "log_format" => self.log_format = value.trim().to_string(),
            _ => {
                return Err(ConfigError::Unknown {
                    key: key.to_string(),
                    origin: origin.to_string(),
                    known: KNOWN.join(", "),
                });
            }
        }
        Ok(())
    }

    /// Checks cross-field rules and fills the default route.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if !self.local_address.is_loopback() && !self.allow_non_local {
            return Err(ConfigError::Invalid(format!(
                "local_address {} is not a loopback address: the local ports carry plain text. Use 127.0.0.1 \
                 (or ::1), or set EDDY_FIPS_ALLOW_NON_LOCAL=true if the network path to the proxy is trusted",
                self.local_address
            )));
        }
        if self.routes.is_empty() {
            self.routes.push(routes::default_otlp_route(self.otlp_upstream.as_deref())?);
        }
        routes::check_table(&self.routes)?;
        let last = u32::from(self.port_range_start) + self.routes.len() as u32;
        if self.port_range_start == 0 || last > u32::from(u16::MAX) {
            return Err(ConfigError::Invalid(format!(
                "port_range_start {} with {} routes needs ports {}..={last}: choose a start between 1 and {}",
                self.port_range_start,
                self.routes.len(),
                self.port_range_start,
                u32::from(u16::MAX) - self.routes.len() as u32
            )));
        }
        if self.max_connections_per_route == 0 {
            return Err(ConfigError::Invalid("max_connections_per_route must be at least 1".into()));
        }
        if !(1..=MAX_STATUS_CONNECTIONS).contains(&self.max_status_connections) {
            return Err(ConfigError::Invalid(format!(
                "max_status_connections {} must be between 1 and {MAX_STATUS_CONNECTIONS}",
                self.max_status_connections
            )));
        }
        if self.min_bytes_per_second > MAX_MIN_BYTES_PER_SECOND {
            return Err(ConfigError::Invalid(format!(
                "min_bytes_per_second {} must be between 0 (off) and {MAX_MIN_BYTES_PER_SECOND}",
                self.min_bytes_per_second
            )));
        }
        for &(name, lo, hi) in DURATION_RANGES {
            let d = match name {
                "connect_timeout" => self.connect_timeout,
                "idle_timeout" => self.idle_timeout,
                "probe_interval" => self.probe_interval,
                "request_timeout" => self.request_timeout,
                _ => self.shutdown_grace,
            };
            let off = name == "probe_interval" && d.is_zero();
            if !off && !(Duration::from_millis(lo)..=Duration::from_millis(hi)).contains(&d) {
                return Err(ConfigError::Invalid(format!(
                    "{name} {}ms must be between {lo}ms and {hi}ms{}",
                    d.as_millis(),
                    if name == "probe_interval" { " (or 0s: off)" } else { "" }
                )));
            }
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(format!(
                "log_format {:?}: expected text or json",
                self.log_format
            )));
        }
        Ok(())
    }

    /// The configuration as it may be logged: URLs' credentials (userinfo, query values)
    /// masked ([`redact::url`]).
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.otlp_upstream = c.otlp_upstream.as_deref().map(redact::url);
        for r in &mut c.routes {
            r.upstream = r.upstream.as_deref().map(redact::url);
        }
        c
    }

    /// The status/health port's address.
    pub fn status_addr(&self) -> SocketAddr {
        SocketAddr::new(self.local_address, self.port_range_start)
    }

    /// Route `index`'s local address.
    pub fn route_addr(&self, index: usize) -> SocketAddr {
        // validate() keeps port_range_start + routes.len() within u16.
        let port = u16::try_from(usize::from(self.port_range_start) + 1 + index).unwrap_or(u16::MAX);
        SocketAddr::new(self.local_address, port)
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err("expected true or false".to_string()),
    }
}

/// Ranges of the duration keys in milliseconds (min, max), checked by [`Config::validate`]:
/// `connect_timeout` 100ms–5m, `idle_timeout` 100ms–24h, `probe_interval` 0s (off) or 1s–24h,
/// `request_timeout` 1s–24h, `shutdown_grace` 0s–10m.
const DURATION_RANGES: &[(&str, u64, u64)] = &[
    ("connect_timeout", 100, 300_000),
    ("idle_timeout", 100, 86_400_000),
    ("probe_interval", 1_000, 86_400_000),
    ("request_timeout", 1_000, 86_400_000),
    ("shutdown_grace", 0, 600_000),
];

/// Largest `max_status_connections`.
const MAX_STATUS_CONNECTIONS: usize = 1024;
/// Largest `min_bytes_per_second` (1 MB/s: a floor, not a throughput target).
const MAX_MIN_BYTES_PER_SECOND: u64 = 1_000_000;

/// `500ms`, `5s`, `2m`, or a bare number of seconds (overflow is an error, never a wrap).
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    let (num, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: u64 =
        num.parse().map_err(|_| format!("expected a duration such as 500ms, 5s or 2m, got {v:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{v:?} is too large (overflows)")),
        _ => Err(format!("unknown unit {unit:?} in {v:?}: use ms, s or m")),
    }
}

/// Durations as text (`5s`) in the file and in the logged configuration.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        let ms = d.as_millis();
        if ms.is_multiple_of(1000) {
            s.serialize_str(&format!("{}s", ms / 1000))
        } else {
            s.serialize_str(&format!("{ms}ms"))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
