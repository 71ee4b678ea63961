//! Steps 5 and 6 of the benchmark: where a connection's time goes, and the agent's memory under a
//! steady load.
//!
//! - Connection cost ([`Bench::conn_cost`]): one `eddy-loadgen conn-rate` run without the agent and
//!   one with it, with the kernel counting eBPF program time (`kernel.bpf_stats_enabled` set to 1 for
//!   this step only, then restored). Per connection (both ends on loopback): the machine's CPU (busy
//!   time of all cores from `/proc/stat` over the run), the calls and nanoseconds of each of the
//!   agent's programs (its `/status` `programs`), and the agent's own CPU (utime+stime). The
//!   counting itself adds two clock reads per call, so the program figures are upper bounds.
//! - Steady memory ([`Bench::steady_memory`]): the agent while this process holds [`HOLD`]
//!   connections open (twice as many live flows: both ends are on this host) and opens [`RATE`]
//!   short connections per second (100 B up, 200 B down) for the run's duration. `VmHWM` is reset
//!   just before the load (`clear_refs`), so the peak is the kernel's, not a sample's.
//!
//! Limits: loopback only, as root (bpf_stats, `RLIMIT_NOFILE`, `clear_refs`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::procs::{self, RunningAgent, note};
use super::{Bench, DRAIN, LISTEN, POLL, SETTLE};

/// Connections held open during the steady load (2 × HOLD live flows).
pub const HOLD: usize = 5_000;
/// Short connections per second during the steady load.
pub const RATE: u64 = 1_000;
/// The steady load's resident memory target.
pub const RSS_TARGET_MIB: f64 = 30.0;

/// One program's share of a connection.
#[derive(Clone, Debug, Serialize)]
pub struct ProgramCost {
    pub program: String,
    pub calls_per_connection: f64,
    pub ns_per_connection: f64,
}

/// Where a connection's time goes (nanoseconds per connection, both ends).
#[derive(Clone, Debug, Serialize)]
pub struct ConnCost {
    pub baseline_rate: f64,
    pub agent_rate: f64,
    /// CPU of the whole machine per connection, without and with the agent.
    pub baseline_cpu_ns: f64,
    pub agent_cpu_ns: f64,
    /// In the agent's eBPF programs, by program (largest first).
    pub programs: Vec<ProgramCost>,
    /// In the agent process (user and system time: draining, labelling, tables, the iterator).
    pub agent_process_ns: f64,
}

impl ConnCost {
    pub fn programs_ns(&self) -> f64 {
        self.programs.iter().map(|p| p.ns_per_connection).sum()
    }
}

/// The agent's memory under the steady load.
#[derive(Clone, Debug, Serialize)]
pub struct SteadyMemory {
    pub held_connections: usize,
    /// Live flows in the agent's table at the end of the load (`/status` `flows.live_flows`).
    pub live_flows: u64,
    pub connections: u64,
    pub seconds: f64,
    /// `VmHWM` over the load (reset before it) and `VmRSS` at its end, KiB.
    pub rss_peak_kib: u64,
    pub rss_end_kib: u64,
    /// `VmHWM` before the reset: the start-up peak (the kernel's BTF parsed while loading).
    pub startup_peak_kib: u64,
}

impl SteadyMemory {
    /// The scenario was reached (all connections held, all live flows seen) and the peak is
    /// within the target.
    pub fn ok(&self) -> bool {
        self.live_flows >= 2 * self.held_connections as u64
            && self.rss_peak_kib as f64 / 1024.0 <= RSS_TARGET_MIB
    }
}

#[derive(Deserialize)]
struct RateSummary {
    connections: u64,
    per_second: f64,
}

/// Busy time of all cores (`/proc/stat`, clock ticks).
fn cpu_busy_ticks() -> Result<u64> {
    Ok(super::procs::CpuStat::read()?.busy)
}

/// `kernel.bpf_stats_enabled` set to 1 until dropped (then its old value again).
struct BpfStats(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<BpfStats> {
        let old = std::fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        std::fs::write(BPF_STATS, "1").with_context(|| format!("writing {BPF_STATS}"))?;
        Ok(BpfStats(old.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS, &self.0) {
            note(&format!("warning: could not restore {BPF_STATS} to {}: {e}", self.0));
        }
    }
}

fn status() -> Result<serde_json::Value> {
    let r = crate::http_get(LISTEN, "/status", Duration::from_secs(5)).context("GET /status")?;
    serde_json::from_str(&r.text()).context("/status is not JSON")
}

/// (calls, ns) by program from `/status`.
fn program_runs(status: &serde_json::Value) -> Vec<(String, u64, u64)> {
    let Some(by) = status["programs"]["by_program"].as_object() else { return Vec::new() };
    by.iter()
        .map(|(name, r)| {
            (name.clone(), r["runs"].as_u64().unwrap_or(0), r["run_time_ns"].as_u64().unwrap_or(0))
        })
        .collect()
}

impl Bench {
    /// One conn-rate run; returns (connections, rate, machine busy ticks).
    fn counted_conn_rate(&self, name: &str) -> Result<(u64, f64, u64)> {
        let out = self.work.join(format!("{name}.json"));
        let b0 = cpu_busy_ticks()?;
        let status = Command::new(&self.loadgen)
            .args(["conn-rate", "--duration", &format!("{}s", self.duration_secs)])
            .stdout(procs::output_file(&out)?)
            .status()
            .context("running eddy-loadgen conn-rate")?;
        let b1 = cpu_busy_ticks()?;
        if !status.success() {
            bail!("eddy-loadgen conn-rate failed ({status})");
        }
        let text = std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
        let s: RateSummary =
            serde_json::from_str(text.trim()).with_context(|| format!("{}: {text}", out.display()))?;
        if s.connections == 0 {
            bail!("eddy-loadgen conn-rate made no connection");
        }
        Ok((s.connections, s.per_second, b1.saturating_sub(b0)))
    }

    /// Step 5: where a connection's time goes.
    pub fn conn_cost(&self, clk_tck: u64) -> Result<ConnCost> {
        let tick_ns = 1e9 / clk_tck as f64;
        procs::wait_quiet(&[])?;
        thread::sleep(SETTLE);
        let (n0, rate0, busy0) = self.counted_conn_rate("cost-baseline")?;
        let log = self.work.join("agent-cost.log");
        let agent = RunningAgent::start(&self.agent, &self.agent_args, LISTEN, POLL, &log, SETTLE)?;
        let stats = BpfStats::enable()?;
        // The agent reads the counters at every scan: wait one out.
        thread::sleep(DRAIN);
        let before = program_runs(&status()?);
        let c0 = procs::cpu_ticks(agent.pid()).context("eddy-agent is gone")?;
        let (n1, rate1, busy1) = self.counted_conn_rate("cost-agent")?;
        thread::sleep(DRAIN);
        let c1 = procs::cpu_ticks(agent.pid()).context("eddy-agent died during the cost run")?;
        let after = program_runs(&status()?);
        drop(stats);
        agent.stop();
        let per_conn = n1 as f64;
        let mut programs: Vec<ProgramCost> = after
            .iter()
            .filter_map(|(name, calls, ns)| {
                let (c0, t0) = before.iter().find(|b| &b.0 == name).map_or((0, 0), |b| (b.1, b.2));
                let calls = calls.saturating_sub(c0);
                (calls > 0).then(|| ProgramCost {
                    program: name.clone(),
                    calls_per_connection: calls as f64 / per_conn,
                    ns_per_connection: ns.saturating_sub(t0) as f64 / per_conn,
                })
            })
            .collect();
        programs.sort_by(|a, b| b.ns_per_connection.total_cmp(&a.ns_per_connection));
        Ok(ConnCost {
            baseline_rate: rate0,
            agent_rate: rate1,
            baseline_cpu_ns: busy0 as f64 * tick_ns / n0 as f64,
            agent_cpu_ns: busy1 as f64 * tick_ns / per_conn,
            programs,
            agent_process_ns: c1.saturating_sub(c0) as f64 * tick_ns / per_conn,
        })
    }

    /// Step 6: the agent's memory with [`HOLD`] connections open and [`RATE`] new ones a second.
    pub fn steady_memory(&self) -> Result<SteadyMemory> {
        // Both ends of every held connection are descriptors of this process.
        raise_nofile(2 * HOLD as u64 + 1_024)?;
        let log = self.work.join("agent-steady.log");
        let agent = RunningAgent::start(&self.agent, &self.agent_args, LISTEN, POLL, &log, SETTLE)?;
        let pid = agent.pid();
        let load = Load::start()?;
        let held = load.hold(HOLD)?;
        // Two scans: every held connection is a live flow by now.
        thread::sleep(Duration::from_secs(2) + DRAIN);
        let startup_peak_kib = procs::status_kib(pid, "VmHWM").unwrap_or(0);
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").context("resetting the agent's VmHWM")?;
        let (count, seconds) = load.paced(self.duration_secs.max(5) as f64)?;
        thread::sleep(DRAIN);
        let live_flows = status()?["flows"]["live_flows"].as_u64().unwrap_or(0);
        let rss_peak_kib = procs::status_kib(pid, "VmHWM").unwrap_or(0);
        let rss_end_kib = procs::status_kib(pid, "VmRSS").unwrap_or(0);
        drop(held);
        load.stop();
        agent.stop();
        Ok(SteadyMemory {
            held_connections: HOLD,
            live_flows,
            connections: count,
            seconds,
            rss_peak_kib,
            rss_end_kib,
            startup_peak_kib,
        })
    }
}

/// Makes room for `want` descriptors: the soft `RLIMIT_NOFILE` up to its hard limit (raising that
/// needs `CAP_SYS_RESOURCE`, which a container's root may lack).
pub(super) fn raise_nofile(want: u64) -> Result<()> {
    use crate::soak::hold;
    hold::raise_nofile().context("raising RLIMIT_NOFILE to its hard limit")?;
    let (soft, _) = hold::nofile().context("reading RLIMIT_NOFILE")?;
    if soft < want {
        bail!("RLIMIT_NOFILE hard limit {soft} is below the {want} descriptors the steady load needs");
    }
    Ok(())
}

/// The steady load's servers on loopback: one that holds what it accepts, one that answers
/// 100 B with 200 B and closes.
pub(super) struct Load {
    hold_addr: SocketAddr,
    short_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    pub(super) fn start() -> Result<Load> {
        let bind = || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a loopback listener");
        let (hold_l, short_l) = (bind()?, bind()?);
        let (hold_addr, short_addr) = (hold_l.local_addr()?, short_l.local_addr()?);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let holder = thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(Ordering::SeqCst) {
                if let Ok((c, _)) = hold_l.accept() {
                    if s.load(Ordering::SeqCst) {
                        break;
                    }
                    held.push(c);
                }
            }
        });
        let s = stop.clone();
        let answerer = thread::spawn(move || {
            let mut buf = [0u8; 100];
            while !s.load(Ordering::SeqCst) {
                if let Ok((mut c, _)) = short_l.accept() {
                    if s.load(Ordering::SeqCst) {
                        break;
                    }
                    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    if c.read_exact(&mut buf).is_ok() {
                        let _ = c.write_all(&[7u8; 200]);
                    }
                }
            }
        });
        Ok(Load { hold_addr, short_addr, stop, threads: vec![holder, answerer] })
    }

    /// `n` connections to the holding server, open until the result is dropped.
    pub(super) fn hold(&self, n: usize) -> Result<Vec<TcpStream>> {
        (0..n)
            .map(|i| TcpStream::connect(self.hold_addr).with_context(|| format!("holding connection {i}")))
            .collect()
    }

    /// [`RATE`] short connections a second for `seconds`: how many, and the seconds they took.
    pub(super) fn paced(&self, seconds: f64) -> Result<(u64, f64)> {
        let t0 = Instant::now();
        let count = (RATE as f64 * seconds) as u64;
        for i in 0..count {
            let due = t0 + Duration::from_secs_f64(i as f64 / RATE as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            self.short()?;
        }
        Ok((count, t0.elapsed().as_secs_f64()))
    }

    /// One short connection: 100 B up, 200 B down, closed.
    fn short(&self) -> Result<()> {
        let mut c = TcpStream::connect(self.short_addr).context("short connection")?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        c.write_all(&[1u8; 100])?;
        let mut buf = [0u8; 200];
        c.read_exact(&mut buf).context("reading the 200 B answer")?;
        Ok(())
    }

    pub(super) fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake both accept() calls.
        let _ = TcpStream::connect(self.hold_addr);
        let _ = TcpStream::connect(self.short_addr);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The connection-cost table: where each nanosecond per connection goes.
pub fn render_cost(out: &mut String, c: &ConnCost) {
    use std::fmt::Write as _;
    let us = |ns: f64| format!("{:.2} us", ns / 1000.0);
    let added = c.programs_ns() + c.agent_process_ns;
    let _ = writeln!(
        out,
        "where a connection's time goes (conn-rate, both ends on loopback; eBPF time counted with \
         kernel.bpf_stats_enabled=1, which adds two clock reads per call):"
    );
    let _ = writeln!(
        out,
        "  machine CPU per connection: {} without the agent ({:.0} conn/s), {} with it ({:.0} conn/s)",
        us(c.baseline_cpu_ns),
        c.baseline_rate,
        us(c.agent_cpu_ns),
        c.agent_rate
    );
    for p in &c.programs {
        let _ = writeln!(
            out,
            "  {:<28} {:>5.2} calls  {:>9}  {:>5.1}% of a connection",
            p.program,
            p.calls_per_connection,
            us(p.ns_per_connection),
            100.0 * p.ns_per_connection / c.baseline_cpu_ns
        );
    }
    let _ = writeln!(
        out,
        "  {:<28} {:>11}  {:>9}  {:>5.1}% of a connection",
        "agent process (user+system)",
        "",
        us(c.agent_process_ns),
        100.0 * c.agent_process_ns / c.baseline_cpu_ns
    );
    let _ = writeln!(
        out,
        "  added per connection: {} ({:.1}% of the {} a connection costs without the agent)",
        us(added),
        100.0 * added / c.baseline_cpu_ns,
        us(c.baseline_cpu_ns)
    );
}

/// The steady-load memory line, with its target.
pub fn render_steady(out: &mut String, s: &SteadyMemory) {
    use std::fmt::Write as _;
    let mib = |k: u64| k as f64 / 1024.0;
    let reached = s.live_flows >= 2 * s.held_connections as u64;
    let _ = writeln!(
        out,
        "agent RSS under a steady load ({} connections held = {} live flows in the table, {} short connections \
         in {:.1} s = {:.0}/s): peak {:.1} MiB (VmHWM reset before the load), {:.1} MiB at its end; start-up \
         peak {:.1} MiB (target: peak <= {RSS_TARGET_MIB} MiB){}",
        s.held_connections,
        s.live_flows,
        s.connections,
        s.seconds,
        s.connections as f64 / s.seconds.max(1e-9),
        mib(s.rss_peak_kib),
        mib(s.rss_end_kib),
        mib(s.startup_peak_kib),
        if !reached {
            "  <-- MISSED (the table did not hold every live flow)"
        } else if s.ok() {
            ""
        } else {
            "  <-- MISSED"
        }
    );
}
