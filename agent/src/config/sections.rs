//! The grouped sections of the configuration (`[udp]`, `[otlp]`, `[ecs]`, `[aws]`, `[fips]`, `[cost]`,
//! `[dns]`, `[conntrack]`, `[api]`), each key once: type, default, meaning, range.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::schema::{days, duration_str, hours, mins, ms, secs, section};

/// Whether remote addresses are resolved through the EC2 API (enhanced resolution).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AwsResolution {
    /// On where IMDS may be called: an EC2 instance (DMI) or an explicitly configured endpoint.
    Auto,
    #[serde(alias = "true")]
    On,
    #[serde(alias = "false")]
    Off,
}

/// Whether DNS messages over TCP are copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsTcp {
    /// Where it costs nothing more: when UDP is counted by the `cgroup_skb` programs, which see every
    /// packet anyway; not where UDP is counted by the UDP function hooks (it would add a program on
    /// every TCP packet).
    Auto,
    #[serde(alias = "true")]
    On,
    #[serde(alias = "false")]
    Off,
}

section! {
    /// UDP flows (the UDP function hooks where the kernel has BPF trampolines, else `cgroup_skb`
    /// programs on every packet).
    pub struct Udp {
        /// Collect UDP flows.
        pub enabled: bool = true;
        /// Capacity of the kernel map of UDP flows (0 = half of `flow_map_entries`).
        pub map_entries: u32 = 0;
        /// A UDP flow without packets for this long is closed and evicted from the kernel map.
        #[serde(with = "duration_str")]
        pub idle_timeout: Duration = secs(60), range secs(1), hours(1);
    }
}

section! {
    /// OTLP/HTTP metrics export.
    pub struct Otlp {
        /// OTLP/HTTP metrics endpoint (full `http://` or `https://` URL, e.g.
        /// `http://127.0.0.1:4318/v1/metrics`); unset: off.
        pub endpoint: Option<String> = None;
        /// Extra HTTP headers, `name=value` (comma-separated in the environment and flags), e.g. an
        /// authorization header: set it from a secret, never in plain text in a task definition.
        /// Values are redacted in logs.
        pub headers: Vec<String> = Vec::new();
        /// Timeout of one OTLP request.
        #[serde(with = "duration_str")]
        pub timeout: Duration = secs(10), range ms(100), mins(5);
        /// Longest wait between OTLP retries (exponential backoff from 1 s, with jitter).
        #[serde(with = "duration_str")]
        pub max_backoff: Duration = secs(60), range secs(1), hours(1);
        /// Batches waiting for the endpoint; more are dropped (counted).
        pub queue_batches: usize = 8, range 1, 1024;
    }
}

section! {
    /// ECS identity: the ECS agent (local ends) and the ECS API (remote ends).
    pub struct Ecs {
        /// ECS agent introspection API (EC2 launch type, `http://` only). Unset:
        /// `http://127.0.0.1:51678` when ECS is detected (task environment variables, or the agent
        /// answering on loopback), else no ECS labels.
        pub agent_uri: Option<String> = None;
        /// How often the ECS task list and the cgroup tree are re-read.
        #[serde(with = "duration_str")]
        pub refresh_interval: Duration = secs(10), range ms(100), hours(1);
        /// ECS cluster whose tasks name remote ends. Unset: the cluster the ECS agent reports.
        pub cluster: Option<String> = None;
        /// Resolve remote ends to the cluster's tasks through the ECS API (ListTasks,
        /// DescribeTasks, DescribeContainerInstances, ec2:DescribeInstances) when ECS is
        /// detected. Region, endpoint and credentials come from the standard AWS SDK environment.
        pub api: bool = true;
        /// How often the cluster's tasks are listed through the ECS API.
        #[serde(with = "duration_str")]
        pub api_refresh_interval: Duration = secs(60), range ms(100), hours(24);
    }
}

section! {
    /// Enhanced resolution: remote addresses → ENI owner through the EC2 API.
    pub struct Aws {
        /// `auto` (on EC2 per DMI, or with an IMDS endpoint configured), `on` or `off`: remote
        /// addresses → ENI owner (load balancer, NAT gateway, endpoint, instance, ...) and the
        /// flow's scope, through `ec2:DescribeNetworkInterfaces`.
        pub resolution: AwsResolution = AwsResolution::Auto;
        /// EC2 API calls per second, at most (bursts up to one second's worth).
        pub api_calls_per_second: f64 = 5.0, range 0.1, 100.0;
        /// How long a resolved address is cached (addresses found in no ENI: half as long).
        #[serde(with = "duration_str")]
        pub cache_ttl: Duration = mins(10), range secs(1), days(7);
        /// This host's region, overriding IMDS (e.g. where IMDS is unreachable).
        pub region: Option<String> = None;
        /// This host's availability zone, overriding IMDS.
        pub availability_zone: Option<String> = None;
    }
}

section! {
    /// FIPS mode (GovCloud): exports through `eddy-fips-proxy` on loopback.
    pub struct Fips {
        /// FIPS mode: every HTTP(S) export goes in plain HTTP over loopback to the `eddy-fips-proxy`
        /// sidecar, which carries it over TLS from the AWS-LC FIPS module; AWS API calls use FIPS
        /// endpoints with a FIPS TLS client. Needs a build with the `fips` feature.
        pub enabled: bool = false;
        /// Address of the proxy's ports (loopback only: the hop to the proxy is plain text).
        pub local_address: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
        /// The proxy's first port (its status port); the OTLP route is the next one.
        pub port_range_start: u16 = 9803;
        /// Talk TLS to the proxy. Not supported (the proxy's local side is plain HTTP): must be false.
        pub https: bool = false;
    }
}

section! {
    /// DNS monitoring.
    pub struct Dns {
        /// Copy DNS messages (port 53) and keep statistics per client, server, name and type (`/dns`,
        /// `/metrics`; eBPF collector only), from the programs that count UDP.
        pub enabled: bool = true;
        /// DNS over TCP: `auto` copies it where UDP is counted by the `cgroup_skb` programs (they see
        /// every packet anyway), not where the UDP function hooks count it (it would add a
        /// `cgroup_skb` program on every TCP packet: `on`); `off` never.
        pub tcp: DnsTcp = DnsTcp::Auto;
        /// A query without an answer for this long counts as a timeout.
        #[serde(with = "duration_str")]
        pub timeout: Duration = secs(5), range ms(100), mins(5);
        /// Query names tracked; beyond, the least-queried names fold into `other`.
        pub max_names: usize = 1_000, range 10, 100_000;
    }
}

section! {
    /// NAT attribution through conntrack.
    pub struct Conntrack {
        /// Read conntrack so that flows through a DNAT'd host port or from a masqueraded container
        /// carry the remote's translated address (`translation`).
        pub enabled: bool = true;
        /// NAT'd connection ends remembered at most (each takes a small map entry); beyond,
        /// counted in `dropped_full`.
        pub max_entries: usize = 65_536, range 16, 10_000_000;
        /// Read the conntrack table of this network namespace (a `/proc/<pid>/ns/net` or
        /// `/run/netns/<name>` path) instead of the agent's own.
        pub netns: Option<PathBuf> = None;
    }
}

section! {
    /// The local HTTP API's limits.
    pub struct Api {
        /// API connections open at once; more are answered 503 and closed (counted).
        pub max_connections: usize = 64, range 1, 4096;
        /// Time a client has to send a request's headers (slowloris guard).
        #[serde(with = "duration_str")]
        pub header_timeout: Duration = secs(5), range ms(100), secs(60);
        /// Time a whole API connection (one request and its answer) may take.
        #[serde(with = "duration_str")]
        pub request_timeout: Duration = secs(30), range secs(1), mins(10);
        /// `Host` values the API accepts besides localhost, 127.0.0.1, [::1] and the `listen`
        /// address (DNS rebinding guard): `name` (no port or the `listen` port), `name:port`, or
        /// `*` (comma-separated in the environment and flags).
        pub allowed_hosts: Vec<String> = Vec::new();
    }
}

section! {
    /// Data transfer prices for the cost estimate (`eddy_estimated_transfer_cost_usd_total`).
    /// Defaults: Amazon EC2 On-Demand pricing, "Data Transfer within the same AWS Region", as
    /// of 2026-12 (us-east-1). GB = 10^9 bytes.
    pub struct Cost {
        /// USD per GB of inter-AZ transfer, charged in each direction: AWS bills the sender's
        /// side (out) and the receiver's side (in), so a byte crossing zones costs twice this.
        pub inter_az_usd_per_gb: f64 = 0.01, range 0.0, 10.0;
        /// USD per GB processed by a NAT gateway (both directions), for flows whose remote end is
        /// a NAT gateway.
        pub nat_gateway_usd_per_gb: f64 = 0.045, range 0.0, 10.0;
    }
}

impl Fips {
    /// The rules of FIPS mode (independent of the build): traffic to the proxy never leaves
    /// the task, and the proxy's routes fit in the port space.
    pub fn check_rules(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.https {
            return Err(
                "fips_https = true is not supported: eddy-fips-proxy's local side is plain HTTP over \
                        loopback; set EDDY_FIPS_HTTPS=false (TLS starts at the proxy)"
                    .into(),
            );
        }
        if !self.local_address.is_loopback() {
            return Err(format!(
                "fips_local_address {} is not a loopback address: the hop to eddy-fips-proxy is plain HTTP \
                 and must not leave the task (use 127.0.0.1 or ::1)",
                self.local_address
            ));
        }
        if self.port_range_start > 65_500 {
            return Err(format!(
                "fips_port_range_start {} leaves no room for the proxy's routes (at most 65500)",
                self.port_range_start
            ));
        }
        Ok(())
    }
}
