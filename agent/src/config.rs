//! Agent configuration: defaults → optional TOML file → `EDDY_*` environment →
//! command-line flags, each layer overriding the one before. Unknown keys and unknown
//! `EDDY_*` variables are rejected, every value is validated at startup, and the effective
//! configuration is logged.
//!
//! One definition per key: the typed, grouped sections ([`sections`], declared with
//! [`schema::section!`]: type, default, meaning, range). The layers fold into one tree that
//! serde reads once ([`layers`]); flags and environment names are derived from it: `timeout`
//! in `[otlp]` is `EDDY_OTLP_TIMEOUT` and `--otlp-timeout` (a flat `otlp_timeout` key is also
//! accepted at the top of the file). The README's configuration reference is generated from
//! the same definition ([`reference`], checked by a test).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod layers;
pub mod reference;
pub mod schema;
pub mod sections;
mod sizing;

use schema::{duration_str, hours, ms, secs, section};
pub use sections::{Api, Aws, AwsResolution, Conntrack, Cost, Dns, DnsTcp, Ecs, Fips, Otlp, Udp};
pub use sizing::host_memory_bytes;

/// Where raw flow records go besides the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// Only the HTTP API.
    None,
    /// JSON lines on stdout every `export_interval` (flows active in the interval).
    Jsonl,
}

/// Which collector turns kernel state into flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectorChoice {
    /// Fargate: `sock_diag`; elsewhere `ebpf`, falling back to `sock_diag` (with a warning)
    /// when the eBPF preflight or load fails.
    Auto,
    /// eBPF programs only; startup fails with what is missing when they cannot load.
    Ebpf,
    /// Netlink sock_diag polling only (no privileges; misses short connections, no UDP).
    SockDiag,
}

impl CollectorChoice {
    pub fn name(self) -> &'static str {
        match self {
            CollectorChoice::Auto => "auto",
            CollectorChoice::Ebpf => "ebpf",
            CollectorChoice::SockDiag => "sock_diag",
        }
    }
}

section! {
    /// The agent's configuration (top-level keys; the sections follow).
    pub struct Config {
        /// Address of the local HTTP API (`/healthz`, `/readyz`, `/status`, `/flows`, `/metrics`).
        pub listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9780));
        /// `none` or `jsonl` (flow records on stdout every `export_interval`).
        pub output: Output = Output::None;
        /// How often open flows, map fill and drop counters are read (closed flows: every 20 ms).
        #[serde(with = "duration_str")]
        pub poll_interval: Duration = secs(1), range ms(10), hours(1);
        /// How often JSON lines are written and series are rolled up.
        #[serde(with = "duration_str")]
        pub export_interval: Duration = secs(10), range ms(100), hours(1);
        /// Capacity of the kernel map of open TCP connections (0 = RAM / 128 KiB, 16 Ki–256 Ki).
        pub flow_map_entries: u32 = 0;
        /// Size of the ring buffer that carries closed connections (a power of two). A closed
        /// connection takes 160 bytes and the ring is drained every 20 ms: the default (1 MiB,
        /// 6,553 records) absorbs a collector pause of 0.25 s at 26,000 closed connections/s;
        /// records that find it full wait in the flow map for the next scan instead
        /// (`ring_buffer_full`, not lost). The agent maps the ring into its memory twice (the
        /// kernel's wrap-around mapping), so its resident set grows by twice this size.
        pub ring_buffer_bytes: u32 = 1 << 20, range 64 << 10, 1 << 30;
        /// Recently closed flows kept in memory for `/flows`.
        pub closed_flow_retention: usize = 10_000, range 0, 10_000_000;
        /// cgroup v2 mount to attach cgroup programs to (default: detected from /proc/self/mountinfo).
        pub cgroup_path: Option<PathBuf> = None;
        /// Count only the sockets of processes in this cgroup v2 directory or below it (an
        /// absolute path, e.g. `/sys/fs/cgroup/ecs` for the ECS agent's tasks, leaving out the
        /// host's own daemons); flows and DNS packets of other cgroups are left out (counted in
        /// `/status` → `cgroup_scope`). A cgroup met for the first time is looked up by a walk
        /// of the directory (at most one per 100 ms); until then its records wait, they are
        /// never guessed in or out. Unset: every socket on the host.
        pub cgroup_scope: Option<PathBuf> = None;
        /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive).
        pub log_level: String = "info".into();
        /// Serve aggregated series and agent health at `/metrics` (OpenMetrics / Prometheus text).
        pub metrics: bool = true;
        /// Most aggregated series kept (12 reserved for `other`); new series beyond it fold into
        /// an `other` series (largest admitted first).
        pub max_series: usize = 10_000, range 20, 1_000_000;
        /// Label groups that make a series (comma-separated in the environment and flags):
        /// `workloads` (local and remote ECS cluster, service, task, container), `scope`, `az`
        /// (local and remote Availability Zone), `remote_resource` (remote AWS kind and name),
        /// `addresses` (local and remote address, always) or `unnamed_addresses` (the address of
        /// an end only when it has no ECS task or service, nor an AWS resource name). Protocol,
        /// family, direction and server port are always labels.
        pub series_labels: Vec<String> =
            crate::aggregate::DEFAULT_GROUPS.iter().map(|g| g.to_string()).collect();
        /// Static tags for every record, `key:value` (comma-separated in the environment and
        /// flags; keys `[a-z_][a-z0-9_]*`, not a label Eddy uses), e.g. `env:prod,team:payments`: a
        /// `tags` object on JSON lines and `/flows`, labels on every `/metrics` sample, OTLP
        /// resource attributes.
        pub tags: Vec<String> = Vec::new();
        /// Hook candidates never to use, by the names `/status` shows (comma-separated in the
        /// environment and flags), e.g. to step around a kernel bug.
        pub disabled_hooks: Vec<String> = Vec::new();
        /// `auto`: sock_diag on Fargate; elsewhere eBPF, falling back to sock_diag with one WARN
        /// line (and `/status` → `collector_reason`) when the eBPF preflight or load fails.
        /// `ebpf`: eBPF or a startup error saying what is missing (exit 1). `sock_diag`: netlink
        /// polling only, no privileges; with root / `CAP_SYS_ADMIN` it covers every network
        /// namespace on the host.
        pub collector: CollectorChoice = CollectorChoice::Auto;
        /// UDP flows.
        pub udp: Udp = Udp::default();
        /// OTLP/HTTP export.
        pub otlp: Otlp = Otlp::default();
        /// ECS identity.
        pub ecs: Ecs = Ecs::default();
        /// Enhanced resolution.
        pub aws: Aws = Aws::default();
        /// FIPS mode.
        pub fips: Fips = Fips::default();
        /// DNS monitoring.
        pub dns: Dns = Dns::default();
        /// NAT attribution.
        pub conntrack: Conntrack = Conntrack::default();
        /// API limits.
        pub api: Api = Api::default();
        /// Data transfer prices.
        pub cost: Cost = Cost::default();
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("unknown environment variable {var}; known: {known}")]
    UnknownEnv { var: String, known: String },
    #[error("{origin}: invalid value {value:?} for {key}: {reason}")]
    Invalid { origin: String, key: String, value: String, reason: String },
    #[error("invalid configuration: {0}")]
    Validation(String),
}

/// `EDDY_CONFIG` names the file; it is not a key.
pub const ENV_CONFIG_FILE: &str = "EDDY_CONFIG";

impl Config {
    /// Builds the effective configuration from all layers.
    /// `env` is the process environment; `flags` are `(key, value)` pairs from the command line.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[(&str, String)],
    ) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with("EDDY_")).collect();
        let env_file = env.iter().find(|(k, _)| k == ENV_CONFIG_FILE).map(|(_, v)| PathBuf::from(v));
        let mut tree = layers::Tree::default();
        if let Some(path) = file.map(Path::to_path_buf).or(env_file) {
            tree.file(&path)?;
        }
        for (var, value) in &env {
            if var == ENV_CONFIG_FILE || crate::faults::ENV_VARS.contains(&var.as_str()) {
                continue;
            }
            tree.env(var, value)?;
        }
        for (key, value) in flags {
            tree.flag(key, value)?;
        }
        let mut cfg = tree.read()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Fills automatic values (0 = scale to memory) and checks ranges and the rules between keys.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let mem = host_memory_bytes();
        if self.flow_map_entries == 0 {
            self.flow_map_entries = sizing::flow_map_entries(mem);
        }
        if self.udp.map_entries == 0 {
            self.udp.map_entries = sizing::flow_map_entries(mem) / 2;
        }
        self.check().map_err(ConfigError::Validation)
    }

    fn check(&self) -> Result<(), String> {
        self.check_ranges("")?;
        self.udp.check_ranges("udp")?;
        self.otlp.check_ranges("otlp")?;
        self.ecs.check_ranges("ecs")?;
        self.aws.check_ranges("aws")?;
        self.fips.check_ranges("fips")?;
        self.dns.check_ranges("dns")?;
        self.conntrack.check_ranges("conntrack")?;
        self.api.check_ranges("api")?;
        self.cost.check_ranges("cost")?;
        crate::aggregate::LabelGroups::parse(&self.series_labels)?;
        for (name, n) in
            [("flow_map_entries", self.flow_map_entries), ("udp_map_entries", self.udp.map_entries)]
        {
            schema::check_range(name, &n, 16, sizing::MAX_MAP_ENTRIES)?;
        }
        let rb = self.ring_buffer_bytes;
        if !rb.is_power_of_two() {
            return Err(format!(
                "ring_buffer_bytes {rb} must be a power of two between 65536 and 1073741824"
            ));
        }
        if let Some(e) = &self.otlp.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            let e = crate::redact::url(e);
            return Err(format!("otlp_endpoint {e:?} must be an http:// or https:// URL"));
        }
        check_headers(&self.otlp.headers)?;
        if let Some(u) = &self.ecs.agent_uri
            && !u.starts_with("http://")
        {
            let u = crate::redact::url(u);
            return Err(format!("ecs_agent_uri {u:?} must be an http:// URL"));
        }
        crate::tags::Tags::parse(&self.tags)?;
        if let Some(p) = &self.cgroup_scope
            && !p.is_absolute()
        {
            return Err(format!("cgroup_scope {p:?} must be an absolute path (e.g. /sys/fs/cgroup/ecs)"));
        }
        self.fips.check_rules()?;
        for h in &self.api.allowed_hosts {
            crate::allowed_hosts::check_entry(h).map_err(|e| format!("api_allowed_hosts: {e}"))?;
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(format!("log_level {:?}: {e}", self.log_level));
        }
        Ok(())
    }

    /// The configuration as it may be logged: header values replaced by `<redacted>`, URLs'
    /// credentials (userinfo, query values) masked ([`crate::redact::url`]).
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.otlp.endpoint = c.otlp.endpoint.as_deref().map(crate::redact::url);
        c.ecs.agent_uri = c.ecs.agent_uri.as_deref().map(crate::redact::url);
        c.otlp.headers = c
            .otlp
            .headers
            .iter()
            .map(|h| format!("{}=<redacted>", h.split_once('=').map_or(h.as_str(), |(k, _)| k)))
            .collect();
        c
    }

    /// `tags`, parsed (validated at startup; invalid entries make no tags here).
    pub fn tag_set(&self) -> crate::tags::Tags {
        crate::tags::Tags::parse(&self.tags).unwrap_or_default()
    }

    /// `series_labels`, parsed (validated at startup; the default groups otherwise).
    pub fn label_groups(&self) -> crate::aggregate::LabelGroups {
        crate::aggregate::LabelGroups::parse(&self.series_labels).unwrap_or_default()
    }

    /// `[cost]` as the aggregator's prices.
    pub fn prices(&self) -> crate::aggregate::Prices {
        crate::aggregate::Prices::from_usd_per_gb(
            self.cost.inter_az_usd_per_gb,
            self.cost.nat_gateway_usd_per_gb,
        )
    }

    /// `otlp.headers` as (name, value) pairs.
    pub fn otlp_header_pairs(&self) -> Vec<(String, String)> {
        self.otlp
            .headers
            .iter()
            .filter_map(|h| h.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
            .collect()
    }
}

/// `otlp_headers`: each entry `name=value` with a valid HTTP header name and value. Errors name
/// the header, never its value (it is usually a credential).
fn check_headers(headers: &[String]) -> Result<(), String> {
    use reqwest::header::{HeaderName, HeaderValue};
    for h in headers {
        let Some((name, value)) = h.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
            return Err("otlp_headers entries must be `name=value` (entry not shown)".into());
        };
        let name = name.trim();
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!(
                "otlp_headers: {name:?} is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)"
            ));
        }
        if HeaderValue::from_str(value.trim()).is_err() {
            return Err(format!(
                "otlp_headers: the value of header {name:?} is not a valid HTTP header value (control \
                 characters or non-ASCII; value not shown)"
            ));
        }
    }
    Ok(())
}

pub fn boolean(v: &str) -> Option<bool> {
    match v.trim() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
