//! Agent configuration: defaults → optional TOML file → `EDDY_*` environment →
//! command-line flags, each layer overriding the one before. Unknown keys (in
//! the file) and unknown `EDDY_*` variables are rejected, every value is
//! validated at startup, and the effective configuration is logged.
//!
//! Every field is settable under the same name everywhere: `poll_interval` in
//! the file, `EDDY_POLL_INTERVAL` in the environment, `--poll-interval` as a flag.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod sizing;

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

/// Whether remote addresses are resolved through the EC2 API (enhanced resolution).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AwsResolution {
    /// On where IMDS may be called: an EC2 instance (DMI) or an explicitly configured endpoint.
    Auto,
    On,
    Off,
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

/// The agent's configuration. See the README's configuration reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the local HTTP API (`/healthz`, `/readyz`, `/status`, `/flows`).
    pub listen: SocketAddr,
    /// `none` or `jsonl` (flow records on stdout every `export_interval`).
    pub output: Output,
    /// How often kernel maps are read (live counters, map fill, drop counters).
    #[serde(with = "duration_str")]
    pub poll_interval: Duration,
    /// How often JSON lines are written when `output = "jsonl"`.
    #[serde(with = "duration_str")]
    pub export_interval: Duration,
    /// Capacity of the kernel map of open TCP connections (0 = scale to host memory).
    pub flow_map_entries: u32,
    /// Capacity of the kernel map of UDP flows (0 = scale to host memory).
    pub udp_map_entries: u32,
    /// Size of the ring buffer that carries closed connections (power of two, ≥ 64 KiB).
    pub ring_buffer_bytes: u32,
    /// Recently closed flows kept in memory for `/flows`.
    pub closed_flow_retention: usize,
    /// A UDP flow without packets for this long is closed and evicted from the kernel map (1s–1h).
    #[serde(with = "duration_str")]
    pub udp_idle_timeout: Duration,
    /// Collect UDP flows (cgroup_skb programs on every packet).
    pub udp: bool,
    /// cgroup v2 mount to attach cgroup programs to (default: detected from /proc/self/mountinfo).
    pub cgroup_path: Option<PathBuf>,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive).
    pub log_level: String,
    /// Serve aggregated series and agent health at `/metrics` (OpenMetrics / Prometheus text).
    pub metrics: bool,
    /// Most aggregated series kept; new series beyond it fold into an `other` series.
    pub max_series: usize,
    /// OTLP/HTTP metrics endpoint (full URL, e.g. `http://127.0.0.1:4318/v1/metrics`); unset = off.
    pub otlp_endpoint: Option<String>,
    /// Extra HTTP headers for the OTLP endpoint, `name=value` (comma-separated in the
    /// environment), e.g. an authorization header: set it from a secret, never in plain
    /// text in a task definition. Values are redacted in logs.
    pub otlp_headers: Vec<String>,
    /// Timeout of one OTLP request (100ms–5m).
    #[serde(with = "duration_str")]
    pub otlp_timeout: Duration,
    /// Longest wait between OTLP retries (exponential backoff from 1 s, with jitter; 1s–1h).
    #[serde(with = "duration_str")]
    pub otlp_max_backoff: Duration,
    /// Batches waiting for the OTLP endpoint; more are dropped (counted).
    pub otlp_queue_batches: usize,
    /// ECS agent introspection API (EC2 launch type). Unset: `http://127.0.0.1:51678` when ECS is
    /// detected (task environment variables, or the agent answering on loopback), else no ECS labels.
    pub ecs_agent_uri: Option<String>,
    /// How often the ECS task list and the cgroup tree are re-read (100ms–1h).
    #[serde(with = "duration_str")]
    pub ecs_refresh_interval: Duration,
    /// ECS cluster whose tasks name remote ends. Unset: the cluster the ECS agent reports.
    pub ecs_cluster: Option<String>,
    /// Resolve remote ends to the cluster's tasks through the ECS API (ListTasks, DescribeTasks,
    /// DescribeContainerInstances, ec2:DescribeInstances) when ECS is detected. Region, endpoint
    /// and credentials come from the standard AWS SDK environment.
    pub ecs_api: bool,
    /// How often the cluster's tasks are listed through the ECS API (100ms–24h).
    #[serde(with = "duration_str")]
    pub ecs_api_refresh_interval: Duration,
    /// Enhanced resolution: remote addresses → ENI owner (load balancer, NAT gateway, endpoint,
    /// instance, ...) and the flow's scope, through `ec2:DescribeNetworkInterfaces`.
    pub aws_resolution: AwsResolution,
    /// EC2 API calls per second for enhanced resolution, at most (bursts up to one second's worth).
    pub aws_api_calls_per_second: f64,
    /// How long a resolved address is cached (addresses found in no ENI: half as long; 1s–7d).
    #[serde(with = "duration_str")]
    pub aws_cache_ttl: Duration,
    /// This host's region, overriding IMDS (e.g. where IMDS is unreachable).
    pub aws_region: Option<String>,
    /// This host's availability zone, overriding IMDS.
    pub aws_availability_zone: Option<String>,
    /// Static tags for every record, `key:value` (comma-separated in the environment), e.g.
    /// `env:prod,team:payments`: a `tags` object on JSON lines and `/flows`, labels on every
    /// `/metrics` sample, OTLP resource attributes.
    pub tags: Vec<String>,
    /// Hook candidates never to use, by the names `/status` shows (comma-separated in the
    /// environment and on the command line), e.g. to step around a kernel bug.
    pub disabled_hooks: Vec<String>,
    /// `auto` (default), `ebpf` or `sock_diag`: see [`CollectorChoice`].
    pub collector: CollectorChoice,
    /// FIPS mode (GovCloud): every HTTP(S) export goes in plain HTTP over loopback to the
    /// `eddy-fips-proxy` sidecar, which carries it over TLS from the AWS-LC FIPS module; AWS API
    /// calls use FIPS endpoints with a FIPS TLS client. Needs a build with the `fips` feature.
    pub fips_enabled: bool,
    /// Address of the proxy's ports (loopback only: the hop to the proxy is plain text).
    pub fips_local_address: IpAddr,
    /// The proxy's first port (its status port); the OTLP route is the next one.
    pub fips_port_range_start: u16,
    /// Talk TLS to the proxy. Not supported (the proxy's local side is plain HTTP): must be false.
    pub fips_https: bool,
    /// DNS monitoring: copy DNS packets (port 53, UDP and TCP) through the cgroup_skb programs and
    /// keep statistics per client, server, name and type (`/dns`, `/metrics`).
    pub dns: bool,
    /// A query without an answer for this long counts as a timeout.
    #[serde(with = "duration_str")]
    pub dns_timeout: Duration,
    /// Query names tracked; beyond, the least-queried names fold into `other`.
    pub dns_max_names: usize,
    /// NAT attribution: read conntrack so that flows through a DNAT'd host port or from a
    /// masqueraded container carry the remote's translated address (`translation`).
    pub conntrack: bool,
    /// NAT'd connections remembered at most (each takes two small map entries).
    pub conntrack_max_entries: usize,
    /// Read the conntrack table of this network namespace (a `/proc/<pid>/ns/net` or
    /// `/run/netns/<name>` path) instead of the agent's own.
    pub conntrack_netns: Option<PathBuf>,
    /// API connections open at once; more are answered 503 and closed (counted).
    pub api_max_connections: usize,
    /// Time a client has to send a request's headers (slowloris guard).
    #[serde(with = "duration_str")]
    pub api_header_timeout: Duration,
    /// Time a whole API connection (one request and its answer) may take.
    #[serde(with = "duration_str")]
    pub api_request_timeout: Duration,
    /// `Host` values the API accepts besides localhost, 127.0.0.1, [::1] and the `listen`
    /// address (DNS rebinding guard): `name` (no port or the `listen` port), `name:port`, or `*`.
    pub api_allowed_hosts: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        let mem = host_memory_bytes();
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9780)),
            output: Output::None,
            poll_interval: Duration::from_secs(1),
            export_interval: Duration::from_secs(10),
            flow_map_entries: sizing::flow_map_entries(mem),
            udp_map_entries: sizing::flow_map_entries(mem) / 2,
            ring_buffer_bytes: 16 << 20,
            closed_flow_retention: 10_000,
            udp_idle_timeout: Duration::from_secs(60),
            udp: true,
            cgroup_path: None,
            log_level: "info".into(),
            metrics: true,
            max_series: 10_000,
            otlp_endpoint: None,
            otlp_headers: Vec::new(),
            otlp_timeout: Duration::from_secs(10),
            otlp_max_backoff: Duration::from_secs(60),
            otlp_queue_batches: 8,
            ecs_agent_uri: None,
            ecs_refresh_interval: Duration::from_secs(10),
            ecs_cluster: None,
            ecs_api: true,
            ecs_api_refresh_interval: Duration::from_secs(60),
            aws_resolution: AwsResolution::Auto,
            aws_api_calls_per_second: 5.0,
            aws_cache_ttl: Duration::from_secs(600),
            aws_region: None,
            aws_availability_zone: None,
            tags: Vec::new(),
            disabled_hooks: Vec::new(),
            collector: CollectorChoice::Auto,
            fips_enabled: false,
            fips_local_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            fips_port_range_start: 9803,
            fips_https: false,
            dns: true,
            dns_timeout: Duration::from_secs(5),
            dns_max_names: 1_000,
            conntrack: true,
            conntrack_max_entries: 65_536,
            conntrack_netns: None,
            api_max_connections: 64,
            api_header_timeout: Duration::from_secs(5),
            api_request_timeout: Duration::from_secs(30),
            api_allowed_hosts: Vec::new(),
        }
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

/// Field names, in the file's spelling (environment: `EDDY_` + upper case).
pub const KEYS: &[&str] = &[
    "listen",
    "output",
    "poll_interval",
    "export_interval",
    "flow_map_entries",
    "udp_map_entries",
    "ring_buffer_bytes",
    "closed_flow_retention",
    "udp_idle_timeout",
    "udp",
    "cgroup_path",
    "log_level",
    "metrics",
    "max_series",
    "otlp_endpoint",
    "otlp_headers",
    "otlp_timeout",
    "otlp_max_backoff",
    "otlp_queue_batches",
    "ecs_agent_uri",
    "ecs_refresh_interval",
    "ecs_cluster",
    "ecs_api",
    "ecs_api_refresh_interval",
    "aws_resolution",
    "aws_api_calls_per_second",
    "aws_cache_ttl",
    "aws_region",
    "aws_availability_zone",
    "tags",
    "disabled_hooks",
    "collector",
    "fips_enabled",
    "fips_local_address",
    "fips_port_range_start",
    "fips_https",
    "dns",
    "dns_timeout",
    "dns_max_names",
    "conntrack",
    "conntrack_max_entries",
    "conntrack_netns",
    "api_max_connections",
    "api_header_timeout",
    "api_request_timeout",
    "api_allowed_hosts",
];

/// `EDDY_CONFIG` names the file; it is not a field.
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
        let mut cfg = match file.map(Path::to_path_buf).or(env_file) {
            Some(path) => Self::from_file(&path)?,
            None => Config::default(),
        };
        for (var, value) in &env {
            if var == ENV_CONFIG_FILE || crate::faults::ENV_VARS.contains(&var.as_str()) {
                continue;
            }
            let key = var["EDDY_".len()..].to_ascii_lowercase();
            if !KEYS.contains(&key.as_str()) {
                return Err(ConfigError::UnknownEnv {
                    var: var.clone(),
                    known: KEYS
                        .iter()
                        .map(|k| format!("EDDY_{}", k.to_ascii_uppercase()))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            cfg.set(&key, value, &format!("environment {var}"))?;
        }
        for (key, value) in flags {
            cfg.set(key, value, &format!("flag --{}", key.replace('_', "-")))?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
    }

    /// Sets one field from its string form.
    pub fn set(&mut self, key: &str, value: &str, origin: &str) -> Result<(), ConfigError> {
        let bad = |reason: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key: key.to_string(),
            value: value.to_string(),
            reason,
        };
        let num = |v: &str| v.trim().replace('_', "").parse::<u64>().map_err(|e| bad(e.to_string()));
        let dur = |v: &str| humantime::parse_duration(v.trim()).map_err(|e| bad(e.to_string()));
        let small = |n: u64| u32::try_from(n).map_err(|_| bad("too large".into()));
        match key {
            "listen" => {
                self.listen =
                    value.trim().parse().map_err(|e: std::net::AddrParseError| bad(e.to_string()))?
            }
            "output" => {
                self.output = match value.trim() {
                    "none" | "" => Output::None,
                    "jsonl" => Output::Jsonl,
                    _ => return Err(bad("expected `none` or `jsonl`".into())),
                }
            }
            "poll_interval" => self.poll_interval = dur(value)?,
            "export_interval" => self.export_interval = dur(value)?,
            "flow_map_entries" => self.flow_map_entries = small(num(value)?)?,
            "udp_map_entries" => self.udp_map_entries = small(num(value)?)?,
            "ring_buffer_bytes" => self.ring_buffer_bytes = small(num(value)?)?,
            "closed_flow_retention" => {
                self.closed_flow_retention =
                    usize::try_from(num(value)?).map_err(|_| bad("too large".into()))?
            }
            "udp_idle_timeout" => self.udp_idle_timeout = dur(value)?,
            "udp" => self.udp = boolean(value).ok_or_else(|| bad("expected true or false".into()))?,
            "metrics" => self.metrics = boolean(value).ok_or_else(|| bad("expected true or false".into()))?,
            "max_series" => {
                self.max_series = usize::try_from(num(value)?).map_err(|_| bad("too large".into()))?
            }
            "cgroup_path" => self.cgroup_path = Some(PathBuf::from(value.trim())),
            "log_level" => self.log_level = value.trim().to_string(),
            "otlp_endpoint" => {
                let v = value.trim();
                self.otlp_endpoint = (!v.is_empty()).then(|| v.to_string());
            }
            "otlp_headers" => {
                self.otlp_headers =
                    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
            }
            "otlp_timeout" => self.otlp_timeout = dur(value)?,
            "ecs_agent_uri" => {
                let v = value.trim();
                self.ecs_agent_uri = (!v.is_empty()).then(|| v.to_string());
            }
            "ecs_refresh_interval" => self.ecs_refresh_interval = dur(value)?,
            "ecs_cluster" => {
                let v = value.trim();
                self.ecs_cluster = (!v.is_empty()).then(|| v.to_string());
            }
            "ecs_api" => self.ecs_api = boolean(value).ok_or_else(|| bad("expected true or false".into()))?,
            "ecs_api_refresh_interval" => self.ecs_api_refresh_interval = dur(value)?,
            "otlp_max_backoff" => self.otlp_max_backoff = dur(value)?,
            "otlp_queue_batches" => {
                self.otlp_queue_batches = usize::try_from(num(value)?).map_err(|_| bad("too large".into()))?
            }
            "aws_resolution" => {
                self.aws_resolution = match value.trim() {
                    "auto" | "" => AwsResolution::Auto,
                    "on" | "true" => AwsResolution::On,
                    "off" | "false" => AwsResolution::Off,
                    _ => return Err(bad("expected auto, on or off".into())),
                }
            }
            "aws_api_calls_per_second" => {
                self.aws_api_calls_per_second =
                    value.trim().parse().map_err(|_| bad("expected a number, e.g. 5 or 0.5".into()))?
            }
            "aws_cache_ttl" => self.aws_cache_ttl = dur(value)?,
            "aws_region" => {
                let v = value.trim();
                self.aws_region = (!v.is_empty()).then(|| v.to_string());
            }
            "aws_availability_zone" => {
                let v = value.trim();
                self.aws_availability_zone = (!v.is_empty()).then(|| v.to_string());
            }
            "tags" => {
                self.tags =
                    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
            }
            "disabled_hooks" => {
                self.disabled_hooks =
                    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
            }
            "collector" => {
                self.collector = match value.trim() {
                    "auto" | "" => CollectorChoice::Auto,
                    "ebpf" => CollectorChoice::Ebpf,
                    "sock_diag" => CollectorChoice::SockDiag,
                    _ => return Err(bad("expected `auto`, `ebpf` or `sock_diag`".into())),
                }
            }
            "fips_enabled" => {
                self.fips_enabled = boolean(value).ok_or_else(|| bad("expected true or false".into()))?
            }
            "fips_local_address" => {
                self.fips_local_address = value
                    .trim()
                    .parse()
                    .map_err(|e: std::net::AddrParseError| bad(format!("{e} (expected an IP address)")))?
            }
            "fips_port_range_start" => {
                self.fips_port_range_start =
                    u16::try_from(num(value)?).map_err(|_| bad("not a port".into()))?
            }
            "fips_https" => {
                self.fips_https = boolean(value).ok_or_else(|| bad("expected true or false".into()))?
            }
            "dns" => self.dns = boolean(value).ok_or_else(|| bad("expected true or false".into()))?,
            "dns_timeout" => self.dns_timeout = dur(value)?,
            "dns_max_names" => {
                self.dns_max_names = usize::try_from(num(value)?).map_err(|_| bad("too large".into()))?
            }
            "conntrack" => {
                self.conntrack = boolean(value).ok_or_else(|| bad("expected true or false".into()))?
            }
            "conntrack_max_entries" => {
                self.conntrack_max_entries =
                    usize::try_from(num(value)?).map_err(|_| bad("too large".into()))?
            }
            "conntrack_netns" => {
                let v = value.trim();
                self.conntrack_netns = (!v.is_empty()).then(|| PathBuf::from(v));
            }
            "api_max_connections" => {
                self.api_max_connections =
                    usize::try_from(num(value)?).map_err(|_| bad("too large".into()))?
            }
            "api_header_timeout" => self.api_header_timeout = dur(value)?,
            "api_request_timeout" => self.api_request_timeout = dur(value)?,
            "api_allowed_hosts" => {
                self.api_allowed_hosts =
                    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
            }
            _ => return Err(bad(format!("unknown key; known: {}", KEYS.join(", ")))),
        }
        Ok(())
    }

    /// Fills automatic values (0 = scale to memory) and checks ranges.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let mem = host_memory_bytes();
        if self.flow_map_entries == 0 {
            self.flow_map_entries = sizing::flow_map_entries(mem);
        }
        if self.udp_map_entries == 0 {
            self.udp_map_entries = sizing::flow_map_entries(mem) / 2;
        }
        let fail = |m: String| Err(ConfigError::Validation(m));
        if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&self.poll_interval) {
            return fail(format!("poll_interval {:?} must be between 10ms and 1h", self.poll_interval));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&self.export_interval) {
            return fail(format!("export_interval {:?} must be between 100ms and 1h", self.export_interval));
        }
        for (name, n) in
            [("flow_map_entries", self.flow_map_entries), ("udp_map_entries", self.udp_map_entries)]
        {
            if !(16..=sizing::MAX_MAP_ENTRIES).contains(&n) {
                return fail(format!("{name} {n} must be between 16 and {}", sizing::MAX_MAP_ENTRIES));
            }
        }
        let rb = self.ring_buffer_bytes;
        if !rb.is_power_of_two() || !(64 << 10..=1 << 30).contains(&rb) {
            return fail(format!(
                "ring_buffer_bytes {rb} must be a power of two between 65536 and 1073741824"
            ));
        }
        if self.closed_flow_retention > 10_000_000 {
            return fail("closed_flow_retention must be at most 10000000".into());
        }
        if !(20..=1_000_000).contains(&self.max_series) {
            return fail(format!("max_series {} must be between 20 and 1000000", self.max_series));
        }
        if let Some(e) = &self.otlp_endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            let e = crate::redact::url(e);
            return fail(format!("otlp_endpoint {e:?} must be an http:// or https:// URL"));
        }
        if let Err(e) = check_headers(&self.otlp_headers) {
            return fail(e);
        }
        if let Some(u) = &self.ecs_agent_uri
            && !u.starts_with("http://")
        {
            let u = crate::redact::url(u);
            return fail(format!("ecs_agent_uri {u:?} must be an http:// URL"));
        }
        if let Err(e) = self.check_duration_ranges() {
            return fail(e);
        }
        if self.ecs_refresh_interval < Duration::from_millis(100) {
            return fail("ecs_refresh_interval must be at least 100ms".into());
        }
        if self.ecs_api_refresh_interval < Duration::from_millis(100) {
            return fail("ecs_api_refresh_interval must be at least 100ms".into());
        }
        if !(0.1..=100.0).contains(&self.aws_api_calls_per_second) {
            return fail("aws_api_calls_per_second must be between 0.1 and 100".into());
        }
        if self.aws_cache_ttl < Duration::from_secs(1) {
            return fail("aws_cache_ttl must be at least 1s".into());
        }
        if let Err(e) = crate::tags::Tags::parse(&self.tags) {
            return fail(e);
        }
        if self.otlp_max_backoff < Duration::from_secs(1) || self.otlp_timeout < Duration::from_millis(100) {
            return fail("otlp_max_backoff must be at least 1s and otlp_timeout at least 100ms".into());
        }
        if !(1..=1024).contains(&self.otlp_queue_batches) {
            return fail("otlp_queue_batches must be between 1 and 1024".into());
        }
        if self.udp_idle_timeout < Duration::from_secs(1) {
            return fail("udp_idle_timeout must be at least 1s".into());
        }
        if self.fips_enabled
            && let Err(e) = crate::fips::check_config(self)
        {
            return fail(e.to_string());
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&self.dns_timeout) {
            return fail(format!("dns_timeout {:?} must be between 100ms and 5m", self.dns_timeout));
        }
        if !(10..=100_000).contains(&self.dns_max_names) {
            return fail(format!("dns_max_names {} must be between 10 and 100000", self.dns_max_names));
        }
        if !(16..=10_000_000).contains(&self.conntrack_max_entries) {
            return fail(format!(
                "conntrack_max_entries {} must be between 16 and 10000000",
                self.conntrack_max_entries
            ));
        }
        if !(1..=4096).contains(&self.api_max_connections) {
            return fail(format!(
                "api_max_connections {} must be between 1 and 4096",
                self.api_max_connections
            ));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.api_header_timeout) {
            return fail(format!(
                "api_header_timeout {:?} must be between 100ms and 60s",
                self.api_header_timeout
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.api_request_timeout) {
            return fail(format!(
                "api_request_timeout {:?} must be between 1s and 10m",
                self.api_request_timeout
            ));
        }
        for h in &self.api_allowed_hosts {
            if let Err(e) = crate::api::host::check_entry(h) {
                return fail(format!("api_allowed_hosts: {e}"));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return fail(format!("log_level {:?}: {e}", self.log_level));
        }
        Ok(())
    }
}

/// Ranges of the duration keys not checked one by one in [`Config::validate`] (min, max): a
/// value outside is refused at start (exit 2), so no later arithmetic (`Instant + d`, doubling
/// backoffs) can overflow or panic.
const MS: u64 = 1;
const S: u64 = 1_000 * MS;
const DURATION_RANGES: &[(&str, u64, u64)] = &[
    ("udp_idle_timeout", S, 3_600 * S),
    ("otlp_timeout", 100 * MS, 300 * S),
    ("otlp_max_backoff", S, 3_600 * S),
    ("ecs_refresh_interval", 100 * MS, 3_600 * S),
    ("ecs_api_refresh_interval", 100 * MS, 86_400 * S),
    ("aws_cache_ttl", S, 7 * 86_400 * S),
];

impl Config {
    /// Checks [`DURATION_RANGES`]; the error names the key and its range.
    fn check_duration_ranges(&self) -> Result<(), String> {
        for &(key, lo, hi) in DURATION_RANGES {
            let d = match key {
                "udp_idle_timeout" => self.udp_idle_timeout,
                "otlp_timeout" => self.otlp_timeout,
                "otlp_max_backoff" => self.otlp_max_backoff,
                "ecs_refresh_interval" => self.ecs_refresh_interval,
                "ecs_api_refresh_interval" => self.ecs_api_refresh_interval,
                _ => self.aws_cache_ttl,
            };
            let (lo, hi) = (Duration::from_millis(lo), Duration::from_millis(hi));
            if !(lo..=hi).contains(&d) {
                return Err(format!(
                    "{key} {} must be between {} and {}",
                    humantime::format_duration(d),
                    humantime::format_duration(lo),
                    humantime::format_duration(hi)
                ));
            }
        }
        Ok(())
    }

    /// The configuration as it may be logged: header values replaced by `<redacted>`, URLs'
    /// credentials (userinfo, query values) masked ([`crate::redact::url`]).
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.otlp_endpoint = c.otlp_endpoint.as_deref().map(crate::redact::url);
        c.ecs_agent_uri = c.ecs_agent_uri.as_deref().map(crate::redact::url);
        c.otlp_headers = c
            .otlp_headers
            .iter()
            .map(|h| format!("{}=<redacted>", h.split_once('=').map_or(h.as_str(), |(k, _)| k)))
            .collect();
        c
    }

    /// `tags`, parsed (validated at startup; invalid entries make no tags here).
    pub fn tag_set(&self) -> crate::tags::Tags {
        crate::tags::Tags::parse(&self.tags).unwrap_or_default()
    }

    /// `otlp_headers` as (name, value) pairs.
    pub fn otlp_header_pairs(&self) -> Vec<(String, String)> {
        self.otlp_headers
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

fn boolean(v: &str) -> Option<bool> {
    match v.trim() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
