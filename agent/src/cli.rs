//! Command line: `eddy-agent run` and `eddy-agent capture`, with one flag per
//! configuration key (flags override `EDDY_*` variables and the config file).

use std::path::PathBuf;
use std::time::Duration;

use std::sync::LazyLock;

use clap::{Arg, ArgMatches, Args, Parser, Subcommand};

use crate::config::layers::{ALIASES, KEYS};

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
        /// Closed flows held until the window ends, to be labelled with everything learnt during
        /// it (memory bound: about 1 KiB each); beyond it the oldest are printed at once.
        #[arg(long, alias = "max-flows", default_value_t = 2_000, value_parser = hold_flows)]
        hold_flows: usize,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Serve the cluster's service map (`/map`, `/api/map`) from a Prometheus-compatible query
    /// API that scrapes the agents, until SIGTERM/SIGINT. Loads no eBPF and needs no privileges.
    Map(MapArgs),
}

/// `eddy-agent map`.
#[derive(Clone, Debug, Args)]
pub struct MapArgs {
    /// Base URL of the query API (`http://prometheus:9090`; for Amazon Managed Service for
    /// Prometheus the workspace URL `https://aps-workspaces.REGION.amazonaws.com/workspaces/ID`).
    #[arg(long)]
    pub prometheus: String,
    /// Where to serve the page (loopback by default; the page has no authentication).
    #[arg(long, default_value = "127.0.0.1:9781")]
    pub listen: std::net::SocketAddr,
    /// Sign queries with SigV4 for Amazon Managed Service for Prometheus in this region
    /// (credentials from the standard AWS chain).
    #[arg(long)]
    pub sigv4_region: Option<String>,
    /// Timeout of each query (1s–5m).
    #[arg(long, default_value = "30s", value_parser = query_timeout)]
    pub query_timeout: Duration,
    /// Inter-AZ price, USD per GB, charged on each side of the crossing (0–10).
    #[arg(long, default_value_t = crate::aggregate::transfer::DEFAULT_INTER_AZ_USD_PER_GB, value_parser = price)]
    pub inter_az_usd_per_gb: f64,
    /// NAT gateway processing price, USD per GB (0–10).
    #[arg(long, default_value_t = crate::aggregate::transfer::DEFAULT_NAT_GATEWAY_USD_PER_GB, value_parser = price)]
    pub nat_gateway_usd_per_gb: f64,
    /// More `Host` names the page may be reached by (DNS-rebinding guard; `name` or `name:port`).
    #[arg(long = "allowed-host")]
    pub allowed_hosts: Vec<String>,
}

impl MapArgs {
    pub fn settings(&self) -> crate::map::ClusterSettings {
        crate::map::ClusterSettings {
            prometheus: self.prometheus.clone(),
            listen: self.listen,
            sigv4_region: self.sigv4_region.clone(),
            query_timeout: self.query_timeout,
            prices: crate::aggregate::Prices::from_usd_per_gb(
                self.inter_az_usd_per_gb,
                self.nat_gateway_usd_per_gb,
            ),
            allowed_hosts: self.allowed_hosts.clone(),
        }
    }
}

fn query_timeout(v: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(v.trim()).map_err(|e| e.to_string())?;
    if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&d) {
        return Err(format!("{} is out of range: 1s–5m", humantime::format_duration(d)));
    }
    Ok(d)
}

fn price(v: &str) -> Result<f64, String> {
    match v.trim().parse::<f64>() {
        Ok(p) if (0.0..=10.0).contains(&p) => Ok(p),
        _ => Err(format!("{v:?}: must be a number of USD per GB from 0 to 10")),
    }
}

/// Configuration flags: one per key of the configuration (`--otlp-timeout` for `timeout` in
/// `[otlp]`), derived from its definition (see [`crate::config::layers`]), plus `--config`.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// TOML configuration file (also `EDDY_CONFIG`).
    pub config: Option<PathBuf>,
    values: Vec<(&'static str, String)>,
}

/// A flag: argument id (the flat key), long name, help, aliases.
struct Flag {
    id: &'static str,
    long: &'static str,
    help: String,
    aliases: Vec<&'static str>,
}

static FLAGS: LazyLock<Vec<Flag>> = LazyLock::new(|| {
    let leak = |s: String| -> &'static str { s.leak() };
    KEYS.iter()
        .map(|(name, key)| {
            let doc = crate::config::reference::doc(key);
            Flag {
                id: name,
                long: leak(name.replace('_', "-")),
                help: doc.split(". ").next().unwrap_or_default().trim_end_matches('.').to_string(),
                aliases: ALIASES
                    .iter()
                    .filter(|(_, to)| to == name)
                    .map(|(alias, _)| leak(alias.replace('_', "-")))
                    .collect(),
            }
        })
        .collect()
});

impl Overrides {
    /// `(config key, value)` for every flag given.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        self.values.clone()
    }
}

impl clap::FromArgMatches for Overrides {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut o = Overrides::default();
        o.update_from_arg_matches(m)?;
        Ok(o)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        if let Some(p) = m.get_one::<PathBuf>("config") {
            self.config = Some(p.clone());
        }
        for f in FLAGS.iter() {
            if let Some(v) = m.get_one::<String>(f.id) {
                self.values.retain(|(k, _)| *k != f.id);
                self.values.push((f.id, v.clone()));
            }
        }
        Ok(())
    }
}

impl Args for Overrides {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let mut cmd = cmd.arg(
            Arg::new("config")
                .long("config")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("TOML configuration file (also EDDY_CONFIG)"),
        );
        for f in FLAGS.iter() {
            cmd = cmd.arg(
                Arg::new(f.id)
                    .long(f.long)
                    .value_name("VALUE")
                    .help(f.help.clone())
                    .aliases(f.aliases.clone()),
            );
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
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

fn hold_flows(v: &str) -> Result<usize, String> {
    let n: usize = v.trim().parse().map_err(|e| format!("{v:?}: {e}"))?;
    if !(1..=10_000_000).contains(&n) {
        return Err(format!("{n} is out of range: 1–10000000"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_config_key_has_a_flag() {
        let mut argv = vec!["eddy-agent".to_string(), "run".into()];
        for (name, _) in KEYS.iter() {
            argv.push(format!("--{}", name.replace('_', "-")));
            argv.push(format!("v-{name}"));
        }
        let cli = Cli::try_parse_from(&argv).expect("parse");
        let Command::Run(o) = cli.command else { panic!("wrong command") };
        let got: Vec<(&str, String)> = o.pairs();
        let want: Vec<(&str, String)> = KEYS.iter().map(|(n, _)| (*n, format!("v-{n}"))).collect();
        assert_eq!(got, want);
        // The short names of earlier versions still work.
        let cli =
            Cli::try_parse_from(["eddy-agent", "run", "--dns", "false", "--udp", "0"]).expect("aliases");
        let Command::Run(o) = cli.command else { panic!("wrong command") };
        assert_eq!(o.pairs(), vec![("udp_enabled", "0".to_string()), ("dns_enabled", "false".to_string())]);
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
            Command::Run(_) | Command::Healthcheck(_) | Command::Map(_) => panic!("wrong command"),
        }
    }

    #[test]
    fn parses_map_flags_and_checks_ranges() {
        let cli = Cli::try_parse_from([
            "eddy-agent",
            "map",
            "--prometheus",
            "http://127.0.0.1:9090",
            "--query-timeout",
            "5s",
        ])
        .expect("parse");
        let Command::Map(args) = cli.command else { panic!("wrong command") };
        let s = args.settings();
        assert_eq!(
            (s.listen.to_string(), s.query_timeout),
            ("127.0.0.1:9781".into(), Duration::from_secs(5))
        );
        assert_eq!(s.prices, crate::aggregate::Prices::default());
        for bad in
            [["--query-timeout", "10m"], ["--inter-az-usd-per-gb", "-1"], ["--nat-gateway-usd-per-gb", "x"]]
        {
            let args = ["eddy-agent", "map", "--prometheus", "http://p", bad[0], bad[1]];
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
    }
}
