//! The overhead benchmark (`eddy-loadgen bench`, run by `scripts/bench-overhead.sh`): how much does a
//! running eddy-agent slow loopback TCP down, what does it cost itself (CPU, memory), and does it
//! account every byte of short-lived connections under churn?
//!
//! What [`run`] does, in order:
//! 1. three loopback measurements with `eddy-loadgen` ([`measure`]): short-lived connection rate,
//!    1 KiB-write and 128 KiB-write throughput, each without the agent (baseline) and with
//!    `eddy-agent run --listen 127.0.0.1:19780 --poll-interval 1s`, over rounds that open and close
//!    with a baseline (the agents' order flips every round; ratios against the baseline
//!    interpolated in time, see [`report`]), waiting out (and measuring again around) other
//!    eddy-agents, whose eBPF programs would skew a baseline, and windows with CPU steal;
//! 2. the agent's CPU over each measured window and its `VmRSS`/`VmHWM` after each agent round;
//! 3. where a connection's time goes: one conn-rate run without and one with the agent, with the
//!    kernel counting each eBPF program's calls and time, and the agent's own CPU ([`cost`]);
//! 4. the agent's memory at 1,000 short connections a second with 10,000 live flows ([`cost`]),
//!    and `eddy-agent capture`'s under the same load ([`capture_mem`]);
//! 5. `eddy-agent capture` while `eddy-loadgen churn` opens COUNT short connections, matched
//!    record by record against the loadgen's 4-tuples ([`churn`]);
//! 6. the report with its targets ([`report`]).
//!
//! Exit status: 0 when every target is met, 1 when one is missed, 2 on a usage or setup error, 130
//! when interrupted. Logs and raw results stay in a `/tmp/eddy-bench.*` directory.
//!
//! Limits: loopback only (127.0.0.0/8), as root; the numbers are only as steady as the machine (other
//! processes, CPU steal); the agent's eBPF time is charged to the traffic, not to its CPU figure.

pub mod capture_mem;
pub mod churn;
pub mod cost;
pub mod measure;
pub mod procs;
pub mod report;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use procs::note;

pub const USAGE: &str = "\
Usage: eddy-loadgen bench [--quick] [--rounds N] [--one-cpu] [--agent PATH] [--disabled-hooks LIST]
                          [--hook-set LIST]... [--json PATH]
       (usually through scripts/bench-overhead.sh, which builds the release binaries first)

Measures eddy-agent's overhead in one run, as root, over loopback only:
  1. short-lived connection rate  (eddy-loadgen conn-rate)
  2. small-write throughput, 1 KiB writes   (eddy-loadgen throughput)
  3. large-write throughput, 128 KiB writes (eddy-loadgen throughput)
     each without the agent (baseline) and with
     `eddy-agent run --listen 127.0.0.1:19780 --poll-interval 1s` running,
     over N rounds, each a baseline, the agent variants (their order flips every
     round) and a baseline again; a window with more than 5% of the CPU time
     stolen by the hypervisor (/proc/stat) is measured again (up to 3 times);
     figures are medians; a ratio is the median over the rounds of the agent's
     figure / the round's baseline interpolated to the agent window's time
  4. the agent's CPU (utime+stime from /proc/PID/stat over the measured windows,
     as % of one core) and memory (VmRSS, VmHWM from /proc/PID/status)
  5. where a connection's time goes: one conn-rate run without the agent and one
     with it while kernel.bpf_stats_enabled=1 (restored after): per connection, the
     machine's CPU (/proc/stat), each eBPF program's calls and time (the agent's
     /status `programs`) and the agent process's CPU
  6. steady memory: the agent while 5,000 connections are held open (10,000 live
     flows) and 1,000 short connections a second are made; VmHWM over that load;
     then the same load for `eddy-agent capture` (connections held before its
     window), VmHWM from after start-up until it exits, and its records counted
  7. churn: `eddy-agent capture` while `eddy-loadgen churn` opens COUNT short
     connections (client sends 100 B, server answers 200 B); the share of them
     whose client-side record (tcp, outgoing) has bytes_sent=100, bytes_received=200

Options:
  --quick       2 s per measurement, 3 rounds, churn --count 5000
                (default: 5 s, 5 rounds, 40000; about 8 minutes, each --hook-set adds 2)
  --rounds N    baseline/agent rounds per measurement (default 5, --quick 3)
  --one-cpu     run everything (the load, the agent, capture) on one CPU, the last this
                process may use: the load is then bound by CPU time, not by wake-ups across
                CPUs, and a ratio is the share of one core the traffic keeps, the agent's own
                CPU included (on a 2-vCPU VM: about +-5 % per window instead of +-15 %)
  --agent PATH  the eddy-agent binary (default: $EDDY_AGENT, else next to eddy-loadgen)
  --disabled-hooks LIST
                passed to the agent (run and capture): hook names as /status shows them,
                comma-separated, e.g. 'tcp_sock counters (live via iter/task_file)' for the
                per-call byte hooks; the report names the kernel and the hook set in use
  --hook-set LIST
                one more agent variant in every round, run with --disabled-hooks LIST: the
                report gives its ratios as rows of their own, with its hook set (repeat it
                for more sets, at most 8; CPU, memory, cost and churn are the main set's)
  --json PATH   also write the results as JSON (ratios, targets, hook set, kernel, CPU, RSS)
  -h, --help    this text

Targets: connection rate >= 0.95x, small-write >= 0.95x, large-write >= 0.99x,
agent and capture RSS peaks under the steady load <= 30 MiB, churn exact share 100%.
Exit status: 0 all targets met, 1 a target missed, 2 usage or setup error.
Logs and raw results are kept in a /tmp/eddy-bench.* directory (printed at the end).
";

/// Where the agent under test listens.
pub const LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 19780);
/// The agent's poll interval.
pub const POLL: &str = "1s";
/// After each measurement: about one poll interval for the agent to drain what the load produced;
/// counted in its CPU window, and applied to the baseline too.
pub const DRAIN: Duration = Duration::from_millis(1500);
/// Idle time after the agent is ready (and before a baseline's first measurement).
pub const SETTLE: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub quick: bool,
    pub rounds: Option<u32>,
    pub agent: Option<PathBuf>,
    /// `--disabled-hooks` of the agent under test.
    pub disabled_hooks: Option<String>,
    /// Where the JSON results go.
    pub json: Option<PathBuf>,
    /// More agent variants measured in every round, each with `--disabled-hooks LIST`.
    pub hook_sets: Vec<String>,
    /// Everything on one CPU.
    pub one_cpu: bool,
}

/// Parses the options of `bench`; `Ok(None)` for `--help`.
pub fn parse(args: &[String]) -> Result<Option<Options>> {
    let mut o = Options {
        quick: false,
        rounds: None,
        agent: None,
        disabled_hooks: None,
        json: None,
        hook_sets: Vec::new(),
        one_cpu: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (flag.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next().cloned());
        match name {
            "--quick" => o.quick = true,
            "--one-cpu" => o.one_cpu = true,
            "--rounds" => {
                let v = value().unwrap_or_default();
                let n: u32 = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=99).contains(n) && !v.starts_with('0'))
                    .ok_or_else(|| anyhow!("--rounds needs a number from 1 to 99"))?;
                o.rounds = Some(n);
            }
            "--agent" => {
                o.agent = Some(PathBuf::from(value().ok_or_else(|| anyhow!("--agent needs a path"))?))
            }
            "--disabled-hooks" => {
                let v = value().filter(|v| !v.trim().is_empty());
                o.disabled_hooks = Some(v.ok_or_else(|| anyhow!("--disabled-hooks needs a list of hooks"))?);
            }
            "--hook-set" => {
                let v = value().filter(|v| !v.trim().is_empty());
                o.hook_sets.push(v.ok_or_else(|| anyhow!("--hook-set needs a list of hooks to disable"))?);
                if o.hook_sets.len() > 8 {
                    bail!("at most 8 --hook-set");
                }
            }
            "--json" => o.json = Some(PathBuf::from(value().ok_or_else(|| anyhow!("--json needs a path"))?)),
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown argument: {other}"),
        }
    }
    Ok(Some(o))
}

/// A benchmark run's settings and work directory.
#[derive(Debug)]
pub struct Bench {
    pub rounds: u32,
    pub duration_secs: u64,
    pub count: u64,
    pub agent: PathBuf,
    pub loadgen: PathBuf,
    pub work: PathBuf,
    /// Extra arguments of every agent run (`--disabled-hooks LIST`).
    pub agent_args: Vec<String>,
    /// `--hook-set` lists: more agent variants, each run with `--disabled-hooks LIST`.
    pub hook_sets: Vec<String>,
}

/// `eddy-loadgen bench …`.
pub fn bench_main(args: &[String]) -> ExitCode {
    let opts = match parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprint!("{USAGE}");
            eprintln!("bench-overhead: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = run(&opts);
    // Interrupted: the children were stopped under the run's feet; the interrupt thread exits (130).
    while procs::interrupted() {
        std::thread::sleep(Duration::from_secs(1));
    }
    match result {
        Ok((report, passed, work)) => {
            print!("{report}");
            println!("raw results and logs: {}", work.display());
            if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("bench-overhead: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the benchmark; returns the report, whether every target was met, and the work directory.
pub fn run(opts: &Options) -> Result<(String, bool, PathBuf)> {
    // Loopback rates on a shared 2-core machine vary by +-20% from second to second: the more
    // rounds, the steadier the medians.
    let (duration_secs, count, rounds) =
        if opts.quick { (2, 5_000, opts.rounds.unwrap_or(3)) } else { (5, 40_000, opts.rounds.unwrap_or(5)) };
    if !nix::unistd::geteuid().is_root() {
        bail!("must run as root (eddy-agent loads eBPF programs)");
    }
    let loadgen = std::env::current_exe().context("locating eddy-loadgen")?;
    let agent = match (&opts.agent, std::env::var_os("EDDY_AGENT")) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => PathBuf::from(p),
        (None, None) => loadgen.with_file_name("eddy-agent"),
    };
    if !agent.is_file() {
        bail!("{} not found (build it, or give --agent PATH)", agent.display());
    }
    if TcpStream::connect_timeout(&LISTEN, Duration::from_secs(2)).is_ok() {
        bail!("something already listens on {LISTEN}");
    }
    procs::handle_interrupts()?;
    // Before any child is spawned: they inherit it.
    let one_cpu = if opts.one_cpu { Some(procs::pin_to_last_cpu()?) } else { None };
    let work = nix::unistd::mkdtemp("/tmp/eddy-bench.XXXXXX").context("creating the work directory")?;
    let clk_tck = procs::clock_ticks()?;
    let agent_args = match &opts.disabled_hooks {
        Some(list) => vec!["--disabled-hooks".to_string(), list.clone()],
        None => Vec::new(),
    };
    let bench = Bench {
        rounds,
        duration_secs,
        count,
        agent,
        loadgen,
        work: work.clone(),
        agent_args,
        hook_sets: opts.hook_sets.clone(),
    };

    note(&format!("work directory: {}", work.display()));
    if let Some(cpu) = one_cpu {
        note(&format!("everything runs on CPU {cpu} (--one-cpu)"));
    }
    let others = procs::foreign_agents(&[]);
    if !others.is_empty() {
        note(&format!(
            "another eddy-agent is running (pid {}): its eBPF programs would skew the baseline",
            procs::pid_list(&others)
        ));
        procs::wait_quiet(&[])?;
    }
    note(&format!(
        "measuring: {rounds} round(s) x (conn-rate, 1 KiB writes, 128 KiB writes), {duration_secs} s each"
    ));
    let results = bench.measure_rounds()?;
    note("where a connection's time goes: conn-rate without and with the agent, eBPF run time counted");
    let cost = bench.conn_cost(clk_tck)?;
    note(&format!(
        "steady load: {} connections held, {} short connections/s, for {} s",
        cost::HOLD,
        cost::RATE,
        duration_secs.max(5)
    ));
    let steady = bench.steady_memory()?;
    note(&format!(
        "capture under the same load: {} connections held, eddy-agent capture, {} short connections/s",
        cost::HOLD,
        cost::RATE
    ));
    let capture_mem = bench.capture_memory()?;
    let churn_run = bench.churn(&results)?;
    let expected = churn::read_tuples(&work.join("churn-tuples.txt"))?;
    let capture = std::fs::File::open(work.join("capture.jsonl")).context("opening capture.jsonl")?;
    let matched = churn::match_capture(std::io::BufReader::new(capture), &expected)?;
    let context = report::Context {
        rounds,
        duration_secs,
        count,
        clk_tck,
        churn: &churn_run,
        matched: &matched,
        cost: Some(&cost),
        steady: Some(&steady),
        capture_memory: Some(&capture_mem),
        one_cpu,
    };
    let (text, passed) = report::render(&results, &context);
    if let Some(path) = &opts.json {
        let json =
            serde_json::to_vec_pretty(&report::json(&results, &context, opts.disabled_hooks.as_deref()))?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok((text, passed, work))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options() {
        let o = parse(&args(&["--quick", "--rounds", "7", "--one-cpu"])).expect("parse").expect("not help");
        assert_eq!(
            o,
            Options {
                quick: true,
                rounds: Some(7),
                agent: None,
                disabled_hooks: None,
                json: None,
                hook_sets: Vec::new(),
                one_cpu: true,
            }
        );
        assert!(!parse(&args(&["--quick"])).expect("parse").expect("not help").one_cpu);
        let o = parse(&args(&["--disabled-hooks", "tcp_iter", "--json=/tmp/x.json"]))
            .expect("parse")
            .expect("not help");
        assert_eq!(
            (o.disabled_hooks.as_deref(), o.json),
            (Some("tcp_iter"), Some(PathBuf::from("/tmp/x.json")))
        );
        assert_eq!(parse(&args(&["-h"])).expect("parse"), None);
        for bad in [
            &["--rounds", "0"][..],
            &["--rounds", "100"],
            &["--rounds"],
            &["--rounds", "07"],
            &["--x"],
            &["--disabled-hooks"],
            &["--json"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }
}
