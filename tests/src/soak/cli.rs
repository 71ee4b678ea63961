//! `eddy-loadgen soak [options]` and `eddy-loadgen soak-hold NETNS WORKER COUNT` (internal).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

pub const USAGE: &str = "\
eddy-loadgen soak: the agent under its task definition's memory limit, many open TCP connections,
a DNS flood and a hammered API (needs root; see scripts/soak.sh)

USAGE:
    eddy-loadgen soak [--duration 10m] [--connections 100000] [--dns-rate 2000] [--dns-servers 64]
                      [--hammer 2] [--sample-every 10s] [--task-definition FILE]
                      [--agent PATH] [--agent-env NAME=VALUE]... [--json FILE]

    --duration D         how long the load runs once the connections are open (s, m, ms)
    --connections N      concurrent TCP connections held (both ends on this host)
    --dns-rate N         DNS queries per second, random names
    --dns-servers N      DNS servers (127.0.53.1 ..), at most 250
    --hammer N           threads requesting /flows, /metrics and /dns back to back
    --sample-every D     RSS sample interval
    --task-definition F  where `memory`, `memoryReservation` and EDDY_* come from
                         (default: task-definitions/eddy-daemon.json of the source tree)
    --agent PATH         eddy-agent binary (default: next to eddy-loadgen)
    --agent-env N=V      an environment variable for the agent on top of the task definition's
    --json FILE          also write the table rows and criteria as JSON

Prints RSS over time, the drop counters and PASS/FAIL per criterion; exit status 0 when all pass,
1 when one fails, 2 on a usage error.
";

fn duration(name: &str, v: &str) -> Result<Duration> {
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = v.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (v, 1.0)
    };
    let secs =
        num.parse::<f64>().map_err(|_| anyhow!("{name}: `{v}` is not a duration (e.g. 10m, 30s)"))? * scale;
    if !(secs > 0.0 && secs <= 86_400.0) {
        bail!("{name}: `{v}` is out of range");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T> {
    v.replace('_', "").parse().map_err(|_| anyhow!("{name}: `{v}` is not a number"))
}

/// Parses the options of `soak` over [`super::Options::full`].
pub fn parse(args: &[String]) -> Result<(super::Options, Option<PathBuf>)> {
    let mut o = super::Options::full();
    let mut json = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag.as_str(), None),
        };
        let mut value =
            || inline.clone().or_else(|| it.next().cloned()).ok_or_else(|| anyhow!("{name} needs a value"));
        match name {
            "--duration" => o.duration = duration(name, &value()?)?,
            "--connections" => o.connections = number(name, &value()?)?,
            "--dns-rate" => o.dns_rate = number(name, &value()?)?,
            "--dns-servers" => o.dns_servers = number::<usize>(name, &value()?)?.clamp(1, 250),
            "--hammer" => o.hammer_threads = number(name, &value()?)?,
            "--sample-every" => o.sample_every = duration(name, &value()?)?,
            "--task-definition" => o.task_definition = PathBuf::from(value()?),
            "--agent" => o.agent = PathBuf::from(value()?),
            "--json" => json = Some(PathBuf::from(value()?)),
            "--agent-env" => {
                let v = value()?;
                let (k, v) = v.split_once('=').ok_or_else(|| anyhow!("--agent-env: expected NAME=VALUE"))?;
                o.agent_env.push((k.to_string(), v.to_string()));
            }
            other => bail!("unknown option `{other}`"),
        }
    }
    if o.connections == 0 {
        bail!("--connections must be at least 1");
    }
    Ok((o, json))
}

/// `eddy-loadgen soak …`.
pub fn soak_main(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let (opts, json) = match parse(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("eddy-loadgen soak: {e:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match super::run(&opts) {
        Ok(report) => {
            print!("{}", report.render());
            if let Some(path) = json
                && let Err(e) = std::fs::write(&path, report.to_json().to_string())
            {
                eprintln!("eddy-loadgen soak: writing {}: {e}", path.display());
            }
            if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("eddy-loadgen soak: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `eddy-loadgen soak-hold NETNS WORKER COUNT` (a worker of [`super::hold::Holders`]).
pub fn hold_main(args: &[String]) -> ExitCode {
    let run = || -> Result<()> {
        let [netns, worker, count] = args else { bail!("expected NETNS WORKER COUNT") };
        let worker: u8 = number("WORKER", worker)?;
        let count: usize = number("COUNT", count)?;
        super::hold::worker_main(std::path::Path::new(netns), worker, count).context("holding connections")
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eddy-loadgen soak-hold: {e:#}");
            ExitCode::FAILURE
        }
    }
}
