//! Command line: `eddy-agent run` and `eddy-agent capture`, with one flag per
//! configuration key (flags override `EDDY_*` variables and the config file).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// `--version`: the crate version, plus `fips` when built with the FIPS TLS client.
pub const VERSION: &str = if cfg!(feature = "fips") {
    concat!(env!("CARGO_PKG_VERSION"), " (features: fips)")
} else {
    env!("CARGO_PKG_VERSION")
};

/// Eddy: network flow monitor for Amazon ECS.
#[derive(Debug, Parser)]
#[command(name = "eddy-agent", version = VERSION, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Collect flows and serve the local API until SIGTERM/SIGINT.
    Run(Overrides),
    /// Exit 0 if the local agent answers `GET /healthz` with 200 within 2 s, else 1 (for the
    /// container health check: no curl needed in the image).
    Healthcheck(Overrides),
    /// Print, as JSON lines, every flow seen during a time window, then exit.
    Capture {
        /// Length of the window (e.g. `10s`, `2m`; 100ms–24h).
        #[arg(long, default_value = "10s", value_parser = capture_duration)]
        duration: Duration,
        /// Flows kept for printing (memory bound); more are counted and reported on stderr.
        #[arg(long, default_value_t = 1_000_000)]
        max_flows: usize,
        #[command(flatten)]
        overrides: Overrides,
    },
}

/// Configuration flags (see the README's configuration reference).
#[derive(Debug, Default, Args)]
pub struct Overrides {
    /// TOML configuration file (also `EDDY_CONFIG`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// API address (default 127.0.0.1:9780).
    #[arg(long)]
    pub listen: Option<String>,
    /// `none` or `jsonl`: flow records on stdout every export interval.
    #[arg(long)]
    pub output: Option<String>,
    /// How often kernel maps are scanned (default 1s).
    #[arg(long)]
    pub poll_interval: Option<String>,
    /// How often JSON lines are written (default 10s).
    #[arg(long)]
    pub export_interval: Option<String>,
    /// Capacity of the TCP connection map (default: scaled to memory).
    #[arg(long)]
    pub flow_map_entries: Option<String>,
    /// Capacity of the UDP flow map (default: scaled to memory).
    #[arg(long)]
    pub udp_map_entries: Option<String>,
    /// Closed-connection ring buffer size in bytes (power of two).
    #[arg(long)]
    pub ring_buffer_bytes: Option<String>,
    /// Recently closed flows kept for /flows.
    #[arg(long)]
    pub closed_flow_retention: Option<String>,
    /// Idle time after which a UDP flow is closed.
    #[arg(long)]
    pub udp_idle_timeout: Option<String>,
    /// Collect UDP flows (`true`/`false`).
    #[arg(long)]
    pub udp: Option<String>,
    /// cgroup v2 mount to attach to.
    #[arg(long)]
    pub cgroup_path: Option<String>,
    /// Log filter (`info`, `debug`, …).
    #[arg(long)]
    pub log_level: Option<String>,
    /// Serve /metrics (`true`/`false`).
    #[arg(long)]
    pub metrics: Option<String>,
    /// Most aggregated series before folding into `other`.
    #[arg(long)]
    pub max_series: Option<String>,
    /// OTLP/HTTP metrics endpoint URL (off when unset).
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// OTLP request headers, `name=value`, comma-separated.
    #[arg(long)]
    pub otlp_headers: Option<String>,
    /// Timeout of one OTLP request.
    #[arg(long)]
    pub otlp_timeout: Option<String>,
    /// Longest wait between OTLP retries.
    #[arg(long)]
    pub otlp_max_backoff: Option<String>,
    /// Batches queued for the OTLP endpoint before dropping.
    #[arg(long)]
    pub otlp_queue_batches: Option<String>,
    /// ECS agent introspection URL (default: detected).
    #[arg(long)]
    pub ecs_agent_uri: Option<String>,
    /// How often ECS tasks and the cgroup tree are re-read.
    #[arg(long)]
    pub ecs_refresh_interval: Option<String>,
    /// ECS cluster whose tasks name remote ends (default: the ECS agent's).
    #[arg(long)]
    pub ecs_cluster: Option<String>,
    /// Resolve remote ends through the ECS API when ECS is detected (true/false).
    #[arg(long)]
    pub ecs_api: Option<String>,
    /// How often the cluster's tasks are listed through the ECS API.
    #[arg(long)]
    pub ecs_api_refresh_interval: Option<String>,
    /// Enhanced resolution through the EC2 API: auto, on or off.
    #[arg(long)]
    pub aws_resolution: Option<String>,
    /// EC2 API calls per second for enhanced resolution, at most.
    #[arg(long)]
    pub aws_api_calls_per_second: Option<String>,
    /// How long resolved addresses are cached.
    #[arg(long)]
    pub aws_cache_ttl: Option<String>,
    /// This host's region (overrides IMDS).
    #[arg(long)]
    pub aws_region: Option<String>,
    /// This host's availability zone (overrides IMDS).
    #[arg(long)]
    pub aws_availability_zone: Option<String>,
    /// Static tags for every record, comma-separated key:value (e.g. env:prod,team:payments).
    #[arg(long)]
    pub tags: Option<String>,
    /// Hook candidates not to use, comma-separated (names as in /status).
    #[arg(long)]
    pub disabled_hooks: Option<String>,
    /// `auto` (default: eBPF, or sock_diag on Fargate and when eBPF cannot load), `ebpf`, `sock_diag`.
    #[arg(long)]
    pub collector: Option<String>,
    /// FIPS mode: exports through eddy-fips-proxy on loopback, FIPS endpoints for AWS API calls.
    #[arg(long)]
    pub fips_enabled: Option<String>,
    /// Address of eddy-fips-proxy's ports (loopback only; default 127.0.0.1).
    #[arg(long)]
    pub fips_local_address: Option<String>,
    /// eddy-fips-proxy's first (status) port; the OTLP route is the next (default 9803).
    #[arg(long)]
    pub fips_port_range_start: Option<String>,
    /// TLS to the proxy: not supported, must be false.
    #[arg(long)]
    pub fips_https: Option<String>,
    /// DNS monitoring (default true).
    #[arg(long)]
    pub dns: Option<String>,
    /// A DNS query unanswered this long is a timeout (default 5s).
    #[arg(long)]
    pub dns_timeout: Option<String>,
    /// DNS query names tracked before folding into `other` (default 1000).
    #[arg(long)]
    pub dns_max_names: Option<String>,
    /// NAT attribution through conntrack (default true).
    #[arg(long)]
    pub conntrack: Option<String>,
    /// NAT'd connections remembered at most (default 65536).
    #[arg(long)]
    pub conntrack_max_entries: Option<String>,
    /// Read conntrack of this network namespace (path) instead of the agent's own.
    #[arg(long)]
    pub conntrack_netns: Option<String>,
    /// API connections open at once (default 64).
    #[arg(long)]
    pub api_max_connections: Option<String>,
    /// Time a client has to send a request's headers (default 5s).
    #[arg(long)]
    pub api_header_timeout: Option<String>,
    /// Time one API connection may take in all (default 30s).
    #[arg(long)]
    pub api_request_timeout: Option<String>,
    /// Extra `Host` values the API accepts (comma-separated; `*`: any).
    #[arg(long)]
    pub api_allowed_hosts: Option<String>,
}

impl Overrides {
    /// `(config key, value)` for every flag given.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        [
            ("listen", &self.listen),
            ("output", &self.output),
            ("poll_interval", &self.poll_interval),
            ("export_interval", &self.export_interval),
            ("flow_map_entries", &self.flow_map_entries),
            ("udp_map_entries", &self.udp_map_entries),
            ("ring_buffer_bytes", &self.ring_buffer_bytes),
            ("closed_flow_retention", &self.closed_flow_retention),
            ("udp_idle_timeout", &self.udp_idle_timeout),
            ("udp", &self.udp),
            ("cgroup_path", &self.cgroup_path),
            ("log_level", &self.log_level),
            ("metrics", &self.metrics),
            ("max_series", &self.max_series),
            ("otlp_endpoint", &self.otlp_endpoint),
            ("otlp_headers", &self.otlp_headers),
            ("otlp_timeout", &self.otlp_timeout),
            ("otlp_max_backoff", &self.otlp_max_backoff),
            ("otlp_queue_batches", &self.otlp_queue_batches),
            ("ecs_agent_uri", &self.ecs_agent_uri),
            ("ecs_refresh_interval", &self.ecs_refresh_interval),
            ("ecs_cluster", &self.ecs_cluster),
            ("ecs_api", &self.ecs_api),
            ("ecs_api_refresh_interval", &self.ecs_api_refresh_interval),
            ("aws_resolution", &self.aws_resolution),
            ("aws_api_calls_per_second", &self.aws_api_calls_per_second),
            ("aws_cache_ttl", &self.aws_cache_ttl),
            ("aws_region", &self.aws_region),
            ("aws_availability_zone", &self.aws_availability_zone),
            ("tags", &self.tags),
            ("disabled_hooks", &self.disabled_hooks),
            ("collector", &self.collector),
            ("fips_enabled", &self.fips_enabled),
            ("fips_local_address", &self.fips_local_address),
            ("fips_port_range_start", &self.fips_port_range_start),
            ("fips_https", &self.fips_https),
            ("dns", &self.dns),
            ("dns_timeout", &self.dns_timeout),
            ("dns_max_names", &self.dns_max_names),
            ("conntrack", &self.conntrack),
            ("conntrack_max_entries", &self.conntrack_max_entries),
            ("conntrack_netns", &self.conntrack_netns),
            ("api_max_connections", &self.api_max_connections),
            ("api_header_timeout", &self.api_header_timeout),
            ("api_request_timeout", &self.api_request_timeout),
            ("api_allowed_hosts", &self.api_allowed_hosts),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }
}

/// `capture --duration`: a humantime duration between 100ms and 24h (beyond, the window's end
/// would be computed from a duration the clock cannot hold).
fn capture_duration(v: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(v.trim()).map_err(|e| e.to_string())?;
    if !(Duration::from_millis(100)..=Duration::from_secs(86_400)).contains(&d) {
        return Err(format!("{} is out of range: 100ms–24h", humantime::format_duration(d)));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_config_key_has_a_flag() {
        let all = Overrides {
            listen: Some("x".into()),
            output: Some("x".into()),
            poll_interval: Some("x".into()),
            export_interval: Some("x".into()),
            flow_map_entries: Some("x".into()),
            udp_map_entries: Some("x".into()),
            ring_buffer_bytes: Some("x".into()),
            closed_flow_retention: Some("x".into()),
            udp_idle_timeout: Some("x".into()),
            udp: Some("x".into()),
            cgroup_path: Some("x".into()),
            log_level: Some("x".into()),
            metrics: Some("x".into()),
            max_series: Some("x".into()),
            otlp_endpoint: Some("x".into()),
            otlp_headers: Some("x".into()),
            otlp_timeout: Some("x".into()),
            otlp_max_backoff: Some("x".into()),
            otlp_queue_batches: Some("x".into()),
            ecs_agent_uri: Some("x".into()),
            ecs_refresh_interval: Some("x".into()),
            ecs_cluster: Some("x".into()),
            ecs_api: Some("x".into()),
            ecs_api_refresh_interval: Some("x".into()),
            aws_resolution: Some("x".into()),
            aws_api_calls_per_second: Some("x".into()),
            aws_cache_ttl: Some("x".into()),
            aws_region: Some("x".into()),
            aws_availability_zone: Some("x".into()),
            tags: Some("x".into()),
            disabled_hooks: Some("x".into()),
            collector: Some("x".into()),
            fips_enabled: Some("x".into()),
            fips_local_address: Some("x".into()),
            fips_port_range_start: Some("x".into()),
            fips_https: Some("x".into()),
            dns: Some("x".into()),
            dns_timeout: Some("x".into()),
            dns_max_names: Some("x".into()),
            conntrack: Some("x".into()),
            conntrack_max_entries: Some("x".into()),
            conntrack_netns: Some("x".into()),
            api_max_connections: Some("x".into()),
            api_header_timeout: Some("x".into()),
            api_request_timeout: Some("x".into()),
            api_allowed_hosts: Some("x".into()),
            config: None,
        };
        let keys: Vec<&str> = all.pairs().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, crate::config::KEYS);
    }

    #[test]
    fn parses_capture_flags() {
        let cli =
            Cli::try_parse_from(["eddy-agent", "capture", "--duration", "2s", "--flow-map-entries", "64"])
                .expect("parse");
        match cli.command {
            Command::Capture { duration, overrides, .. } => {
                assert_eq!(duration, Duration::from_secs(2));
                assert_eq!(overrides.pairs(), vec![("flow_map_entries", "64".to_string())]);
            }
            Command::Run(_) | Command::Healthcheck(_) => panic!("wrong command"),
        }
    }
}
