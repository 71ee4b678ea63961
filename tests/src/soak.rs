//! The soak: the agent under its task definition's memory limit while it watches many open TCP
//! connections and a DNS flood, its API hammered (`eddy-loadgen soak`, `scripts/soak.sh`,
//! `tests/tests/soak_small.rs`).
//!
//! What [`run`] does, in order:
//! 1. a memory cgroup with the daemon task definition's `memory` as hard limit ([`cgroup`]) and the
//!    agent in it (`eddy-agent run`, the task definition's `EDDY_*` environment, [`agent`]);
//! 2. a network namespace of its own holding `connections` idle TCP connections, both ends, in
//!    worker processes ([`hold`]), one busy connection with known byte counts ([`known`]), DNS
//!    servers on 127.0.53.X and a flood of random names to them ([`dns_flood`]);
//! 3. `/flows`, `/metrics` and `/dns` hammered back to back, `/healthz` and `/status` probed every
//!    250 ms ([`probe`]), RSS and cgroup usage sampled every `sample_every`, for `duration`;
//! 4. the load stops; the drop counters are read; the held connections close; the known connection
//!    closes and must be exact in `/flows` and in the JSON lines;
//! 5. [`Report`] judges the criteria ([`report`]).
//!
//! Limits: loopback of a namespace of its own only; the numbers depend on what else the machine does
//! (other agents' eBPF programs see these connections too, and this agent sees theirs).

pub mod agent;
pub mod cgroup;
pub mod cli;
pub mod dns_flood;
pub mod hold;
pub mod known;
pub mod probe;
pub mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

pub use report::{Report, Row};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub duration: Duration,
    pub connections: usize,
    /// DNS queries per second.
    pub dns_rate: u64,
    pub dns_servers: usize,
    pub hammer_threads: usize,
    pub sample_every: Duration,
    pub task_definition: PathBuf,
    pub agent: PathBuf,
    /// `eddy-loadgen` (for the worker processes).
    pub loadgen: PathBuf,
    /// Environment for the agent on top of the task definition's (e.g. another `EDDY_*` value).
    pub agent_env: Vec<(String, String)>,
}

impl Options {
    /// Defaults of the full soak; binaries next to the running executable (or `deps/..`).
    pub fn full() -> Options {
        let exe = std::env::current_exe().unwrap_or_default();
        let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
        if dir.ends_with("deps") {
            dir.pop();
        }
        Options {
            duration: Duration::from_secs(600),
            connections: 100_000,
            dns_rate: 2_000,
            dns_servers: 64,
            hammer_threads: 2,
            sample_every: Duration::from_secs(10),
            task_definition: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../task-definitions/eddy-daemon.json"),
            agent: dir.join("eddy-agent"),
            loadgen: dir.join("eddy-loadgen"),
            agent_env: Vec::new(),
        }
    }

    /// TCP map entries for the agent: room for both ends of every connection, and more.
    pub fn flow_map_entries(&self) -> usize {
        (self.connections * 5 / 2).max(65_536)
    }
}

/// Runs the soak (needs root); progress goes to stderr.
pub fn run(o: &Options) -> Result<Report> {
    let (limit, soft) = cgroup::task_memory_limits(&o.task_definition, Some("eddy-agent"))?;
    let cg = cgroup::MemoryCgroup::create("agent", limit, soft)?;
    let mut env = agent::task_environment(&o.task_definition, Some("eddy-agent"))?;
    env.retain(|(k, _)| k != "EDDY_LISTEN");
    env.push(("EDDY_FLOW_MAP_ENTRIES".into(), o.flow_map_entries().to_string()));
    env.extend(o.agent_env.iter().cloned());
    let poll = env
        .iter()
        .find(|(k, _)| k == "EDDY_POLL_INTERVAL")
        .map(|(_, v)| v.trim_end_matches('s').parse().map(Duration::from_secs_f64))
        .transpose()
        .map_err(|e| anyhow!("EDDY_POLL_INTERVAL: {e}"))?
        .unwrap_or(Duration::from_secs(1));
    let ns = crate::NetNs::new("soak");
    let ns_path = PathBuf::from(format!("/run/netns/{}", ns.name()));
    let t0 = Instant::now();
    let mut agent =
        agent::SoakAgent::start(&o.agent, &env, &cg.procs_path(), known::SERVER.ip().to_string())?;
    note(
        t0,
        &format!(
            "eddy-agent pid {} on {} in {} ({:?}, memory limit {} MiB, reservation {} MiB), env {env:?}",
            agent.pid,
            agent.addr,
            cg.dir().display(),
            cg.version(),
            limit >> 20,
            soft.unwrap_or(0) >> 20
        ),
    );
    let mut probes = probe::Probes::start(agent.addr, t0);
    let known = known::Known::start(&ns);
    let mut holders = hold::Holders::start(&o.loadgen, &ns_path, o.connections, Duration::from_secs(600))?;
    note(
        t0,
        &format!(
            "holding {} connections ({} failed attempts) in {} workers, opened in {:.1} s",
            holders.held,
            holders.errors,
            holders.started,
            holders.setup.as_secs_f64()
        ),
    );
    let steady_from = t0.elapsed();
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, answers) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (servers, rate) = (o.dns_servers, o.dns_rate);
    let responders = {
        let stop = Arc::clone(&stop);
        ns.run(move || dns_flood::Responders::start(servers, 2, &stop))?
    };
    let flood = {
        let (stop, sent, answers) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&answers));
        ns.spawn(move || dns_flood::flood(rate, servers, 8, &stop, &sent, &answers))
    };
    probes = probes.hammer(agent.addr, o.hammer_threads);

    let mut rows = Vec::new();
    let end = Instant::now() + o.duration;
    loop {
        let (rss, hwm) = agent.rss();
        let seen = probes.snapshot();
        let row = Row {
            seconds: t0.elapsed().as_secs_f64(),
            rss,
            hwm,
            cgroup: cg.usage().current,
            live_flows: seen.status.last().map_or(0, |s| s.3),
            dns_queries: sent.load(Ordering::Relaxed),
            api_requests: seen.hammer_requests,
            healthz_max: seen.healthz_max,
        };
        note(t0, &row.line());
        rows.push(row);
        if Instant::now() >= end {
            break;
        }
        if !agent.running() {
            note(t0, &format!("eddy-agent exited; last stderr lines:\n{}", agent.stderr_tail(5)));
            break;
        }
        std::thread::sleep(o.sample_every.min(end.saturating_duration_since(Instant::now())));
    }

    stop.store(true, Ordering::Relaxed);
    let flood = flood.join().map_err(|_| anyhow!("the DNS flood panicked"))??;
    let answered = responders.answered.load(Ordering::Relaxed);
    for t in responders.threads {
        let _ = t.join();
    }
    let observed = probes.stop();
    let mut known = known.stop()?;
    note(t0, &format!("load stopped; {} DNS queries, {} answered", flood.queries, flood.answers));
    std::thread::sleep(poll * 3);
    let (addr, alive_after_load) = (agent.addr, agent.running());
    let http = |path: &str| {
        crate::http::http_get(addr, path, Duration::from_secs(60))
            .map_err(|e| format!("GET {path}: {e}"))
            .and_then(|r| if r.status == 200 { Ok(r) } else { Err(format!("GET {path}: {}", r.status)) })
    };
    let patience = |d: Duration| if alive_after_load { d } else { Duration::ZERO };
    // When the agent died (OOM kill), what it can no longer answer is recorded, not fatal.
    let status: serde_json::Value = http("/status")
        .and_then(|r| serde_json::from_slice(&r.body).map_err(|e| format!("/status: {e}")))
        .unwrap_or_else(|e| serde_json::json!({ "error": e }));
    let metrics = http("/metrics").map(|r| r.text()).unwrap_or_else(|e| format!("# {e}"));
    let known_live = http("/flows?limit=100000").and_then(|live| {
        let mut f = flows_of(&live.body)?;
        f.reverse();
        let total = live.header("x-eddy-flows-total").unwrap_or("?").to_string();
        known.check(&f).map_err(|e| format!("{e} (among {} of {total} flows)", f.len()))
    });
    holders.release();
    note(t0, "held connections closed");
    // Until the agent has taken the closes in (the known connection must close after them, or it
    // is not among the newest closed flows), at most a minute.
    let _ = wait_for(patience(Duration::from_secs(60)), || {
        let r = http("/status")?;
        let s: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
        let live = s["flows"]["live_flows"].as_u64().unwrap_or(u64::MAX);
        if live < 1_000 { Ok(String::new()) } else { Err(format!("{live} flows still open")) }
    });
    std::thread::sleep(poll * 3);
    known.close()?;
    let known_closed = wait_for(patience(Duration::from_secs(15)), || {
        let r = http("/flows?limit=1000")?;
        let mut f = flows_of(&r.body)?;
        f.reverse();
        known.check(&f)
    });
    let known_jsonl = wait_for(patience(Duration::from_secs(30)), || {
        let watched = agent.stdout.lock().map(|s| s.watched.clone()).unwrap_or_default();
        let f: Vec<crate::FlowRecord> = watched.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
        known.check(&f)
    });
    let usage = cg.usage();
    let alive = agent.running();
    let (lines, bytes) = agent.stdout.lock().map(|s| (s.lines, s.bytes)).unwrap_or_default();
    let exit = agent.stop();
    Ok(Report {
        options: o.clone(),
        limit,
        cgroup_version: cg.version(),
        held: holders.held,
        hold_errors: holders.errors,
        workers: holders.started,
        setup: holders.setup,
        steady_from: steady_from.as_secs_f64(),
        poll,
        rows,
        usage,
        observed,
        known_rounds: known.rounds,
        known_live,
        known_closed,
        known_jsonl,
        status,
        metrics,
        flood,
        answered,
        alive_at_end: alive,
        exit: exit.map_or("killed after 20 s".into(), |s| s.to_string()),
        stdout_lines: lines,
        stdout_bytes: bytes,
    })
}

fn note(t0: Instant, what: &str) {
    eprintln!("soak [{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
}

fn flows_of(body: &[u8]) -> Result<Vec<crate::FlowRecord>, String> {
    serde_json::from_slice(body).map_err(|e| format!("/flows is not a list of flow records: {e}"))
}

/// Retries `check` every 500 ms until it passes or `timeout` passes (then its last error).
fn wait_for(timeout: Duration, mut check: impl FnMut() -> Result<String, String>) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = check();
        if r.is_ok() || Instant::now() >= deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
