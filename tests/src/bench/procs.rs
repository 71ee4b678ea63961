//! Processes of the benchmark: the agent under test (`eddy-agent run` and `eddy-agent capture`),
//! other agents on the host, `/proc` readings (CPU ticks, `VmRSS`/`VmHWM`), and the clean-up on
//! SIGINT/SIGTERM.
//!
//! The agent is started with [`crate::agent::command_for`] (the AWS SDK fenced to loopback, no IMDS),
//! its stdout and stderr in files of the work directory. Every child is registered so that an
//! interrupt stops it before the benchmark exits (status 130).

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction};
use nix::unistd::Pid;

use crate::http::http_get;

/// Process name (`comm`) of the agent.
const AGENT_COMM: &str = "eddy-agent";

/// Children to stop on SIGINT/SIGTERM.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A progress line on stderr.
pub fn note(msg: &str) {
    eprintln!("bench-overhead: {msg}");
}

fn children() -> std::sync::MutexGuard<'static, Vec<u32>> {
    CHILDREN.lock().unwrap_or_else(PoisonError::into_inner)
}

fn register(pid: u32) {
    children().push(pid);
}

fn unregister(pid: u32) {
    children().retain(|p| *p != pid);
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_none_or(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// SIGTERM, up to 5 s for the exit, then SIGKILL (the children of an interrupted run).
fn terminate_pid(pid: u32) {
    let target = Pid::from_raw(pid as i32);
    if kill(target, Signal::SIGTERM).is_err() {
        return;
    }
    for _ in 0..20 {
        if !alive(pid) {
            return;
        }
        thread::sleep(Duration::from_millis(250));
    }
    let _ = kill(target, Signal::SIGKILL);
}

/// Set by the SIGINT/SIGTERM handler.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Whether SIGINT or SIGTERM arrived (the interrupt thread then stops the children and exits).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Handles SIGINT and SIGTERM: a thread stops the registered children, prints `interrupted` and
/// exits with status 130. (A handler, not a blocked mask with `sigwait`: children inherit a blocked
/// mask, and an agent with SIGTERM blocked would never stop.)
pub fn handle_interrupts() -> Result<()> {
    let action = SigAction::new(SigHandler::Handler(on_interrupt), SaFlags::SA_RESTART, SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; exec resets it
        // to the default in children.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("installing a {signal} handler"))?;
    }
    thread::Builder::new()
        .name("interrupt".into())
        .spawn(|| {
            while !INTERRUPTED.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(100));
            }
            note("interrupted");
            let pids = children().clone();
            for pid in pids {
                terminate_pid(pid);
            }
            std::process::exit(130);
        })
        .context("spawning the interrupt thread")?;
    Ok(())
}

/// utime + stime (clock ticks) of all the process's threads, from `/proc/PID/stat`.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the rest starts at field 3 (state).
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The machine's CPU time so far (all cores, clock ticks), from the first line of `/proc/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStat {
    /// All but idle and iowait (user nice system irq softirq steal).
    pub busy: u64,
    /// user nice system idle iowait irq softirq steal.
    pub total: u64,
    /// Time the hypervisor ran something else while this VM wanted a CPU.
    pub steal: u64,
}

impl CpuStat {
    pub fn read() -> Result<CpuStat> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        CpuStat::parse(stat.lines().next().unwrap_or_default())
    }

    /// Parses the `cpu  user nice system idle iowait irq softirq steal ...` line.
    pub fn parse(line: &str) -> Result<CpuStat> {
        let v: Vec<u64> = line.split_whitespace().skip(1).take(8).filter_map(|f| f.parse().ok()).collect();
        if !line.starts_with("cpu ") || v.len() < 5 {
            bail!("/proc/stat: unexpected first line {line:?}");
        }
        let total: u64 = v.iter().sum();
        Ok(CpuStat { busy: total - v[3] - v[4], total, steal: v.get(7).copied().unwrap_or(0) })
    }

    /// The share of the CPU time between `self` and `later` that was stolen (0 when none passed).
    pub fn steal_share(self, later: CpuStat) -> f64 {
        let total = later.total.saturating_sub(self.total);
        if total == 0 { 0.0 } else { later.steal.saturating_sub(self.steal) as f64 / total as f64 }
    }
}

/// Confines this process (and the children it spawns from now on) to the last CPU it may use;
/// returns that CPU.
pub fn pin_to_last_cpu() -> Result<usize> {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    let mine = sched_getaffinity(Pid::from_raw(0)).context("sched_getaffinity")?;
    let cpu = (0..CpuSet::count())
        .rev()
        .find(|&c| mine.is_set(c).unwrap_or(false))
        .context("this process may run on no CPU")?;
    let mut one = CpuSet::new();
    one.set(cpu).context("CpuSet::set")?;
    sched_setaffinity(Pid::from_raw(0), &one).with_context(|| format!("sched_setaffinity(CPU {cpu})"))?;
    Ok(cpu)
}

/// A `KEY: N kB` line of `/proc/PID/status`, in KiB.
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
}

/// Clock ticks per second (`getconf CLK_TCK`).
pub fn clock_ticks() -> Result<u64> {
    let tck = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .context("sysconf(CLK_TCK)")?
        .filter(|t| *t > 0)
        .context("sysconf(CLK_TCK) has no value")?;
    Ok(u64::try_from(tck)?)
}

/// Pids of `eddy-agent` processes other than `own`. Their eBPF programs are global (any network
/// namespace): a baseline measured while one runs is not a baseline.
pub fn foreign_agents(own: &[u32]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| !own.contains(pid))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == AGENT_COMM)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// `pid 1 2 3` for messages.
pub fn pid_list(pids: &[u32]) -> String {
    pids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
}

/// Waits (at most 5 minutes) until no other eddy-agent runs.
pub fn wait_quiet(own: &[u32]) -> Result<()> {
    let mut others = Vec::new();
    for i in 0..1200 {
        others = foreign_agents(own);
        if others.is_empty() {
            return Ok(());
        }
        if i % 40 == 0 {
            note(&format!("waiting for another eddy-agent to exit (pid {})", pid_list(&others)));
        }
        thread::sleep(Duration::from_millis(250));
    }
    bail!("another eddy-agent (pid {}) ran for 5 minutes; stop it and retry", pid_list(&others))
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The shell's view of an exit status: the code, or 128 + the signal.
pub fn status_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1)
}

/// Creates (truncates) `path` for a child's output.
pub fn output_file(path: &Path) -> Result<File> {
    File::create(path).with_context(|| format!("creating {}", path.display()))
}

/// A registered child; SIGTERM, 5 s, SIGKILL on drop.
pub struct Proc {
    child: Child,
    pub pid: u32,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` (its stdio already set) and registers it.
    pub fn spawn(mut cmd: Command) -> Result<Proc> {
        let child =
            cmd.spawn().with_context(|| format!("starting {}", cmd.get_program().to_string_lossy()))?;
        let pid = child.id();
        register(pid);
        Ok(Proc { child, pid, status: None })
    }

    /// The exit status once the process has exited, `None` while it runs.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.status = Some(status);
            unregister(self.pid);
        }
        self.status
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Sends `signal` (if the process still runs).
    pub fn signal(&mut self, signal: Signal) {
        if self.running() {
            let _ = kill(Pid::from_raw(self.pid as i32), signal);
        }
    }

    /// Waits for the exit.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.child.wait().with_context(|| format!("waiting for pid {}", self.pid))?;
        self.status = Some(status);
        unregister(self.pid);
        Ok(status)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            terminate_pid(self.pid);
            let _ = self.wait();
        }
    }
}

/// `eddy-agent` with `args`: the tests' command (AWS fenced to loopback), without the benchmark's own
/// variables (the agent rejects unknown `EDDY_*` names).
pub fn agent_command(bin: &Path, args: &[String]) -> Command {
    let mut cmd = crate::agent::command_for(bin, args);
    cmd.env_remove("EDDY_AGENT").env_remove("EDDY_LOADGEN");
    cmd
}

/// `eddy-agent run --listen LISTEN --poll-interval POLL`, ready (`/readyz` 2xx) and settled.
pub struct RunningAgent {
    pub proc: Proc,
}

impl RunningAgent {
    /// Starts the agent (plus `extra` arguments) with its output in `log`, waits up to 60 s for
    /// `/readyz`, then `settle`.
    pub fn start(
        bin: &Path,
        extra: &[String],
        listen: SocketAddr,
        poll: &str,
        log: &Path,
        settle: Duration,
    ) -> Result<Self> {
        let mut args: Vec<String> =
            ["run", "--listen", &listen.to_string(), "--poll-interval", poll].map(String::from).into();
        args.extend(extra.iter().cloned());
        let mut cmd = agent_command(bin, &args);
        // Both streams into one log (one open file, as `>"$log" 2>&1`).
        let file = output_file(log)?;
        cmd.stderr(file.try_clone().context("duplicating the log file")?).stdout(file);
        let mut proc = Proc::spawn(cmd)?;
        for _ in 0..120 {
            if !proc.running() {
                eprintln!("{}", tail(log, 20));
                bail!("eddy-agent exited during startup (log: {})", log.display());
            }
            if http_get(listen, "/readyz", Duration::from_secs(2))
                .is_ok_and(|r| (200..300).contains(&r.status))
            {
                thread::sleep(settle);
                return Ok(RunningAgent { proc });
            }
            thread::sleep(Duration::from_millis(500));
        }
        eprintln!("{}", tail(log, 20));
        bail!("eddy-agent not ready after 60 s (log: {})", log.display())
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid
    }

    /// SIGTERM, up to 15 s for the exit (then SIGKILL); warns about a non-zero status.
    pub fn stop(mut self) {
        let pid = self.proc.pid;
        self.proc.signal(Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.proc.running() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(500));
        }
        if self.proc.running() {
            note(&format!("warning: eddy-agent (pid {pid}) ignored SIGTERM for 15 s; killing it"));
            self.proc.signal(Signal::SIGKILL);
        }
        if let Ok(status) = self.proc.wait()
            && !status.success()
        {
            note(&format!("warning: eddy-agent exited with status {} after SIGTERM", status_code(status)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CpuStat;

    #[test]
    fn cpu_stat_counts_steal_in_busy_and_total() {
        let a = CpuStat::parse("cpu  100 5 50 1000 20 0 10 15 0 0").expect("parse");
        assert_eq!(a, CpuStat { busy: 180, total: 1200, steal: 15 });
        let b = CpuStat::parse("cpu  200 5 90 1200 20 0 20 65 0 0").expect("parse");
        // 400 ticks passed, 50 of them stolen.
        assert!((a.steal_share(b) - 0.125).abs() < 1e-9);
        assert_eq!(a.steal_share(a), 0.0);
    }

    #[test]
    fn cpu_stat_without_steal_column_and_bad_lines() {
        let old = CpuStat::parse("cpu  1 2 3 4 5").expect("a 2.4 kernel's five columns");
        assert_eq!(old, CpuStat { busy: 6, total: 15, steal: 0 });
        assert!(CpuStat::parse("cpu0 1 2 3 4 5 6 7 8").is_err());
        assert!(CpuStat::parse("cpu  1 2 x").is_err());
        assert!(CpuStat::parse("").is_err());
    }
}
