//! The guest role: the result sink, the scenario runner (one thread per scenario, time limit, panics
//! caught) and what every scenario gets ([`Ctx`]: the agent and the hooks `/status` reported).

use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::agent::GuestAgent;
use crate::{SCENARIOS, flag};

/// Where the agent listens in the guest.
pub const AGENT_ADDR: &str = "127.0.0.1:9780";

/// One scenario of the matrix.
pub struct Scenario {
    pub name: &'static str,
    /// Wall-clock limit (TCG included); past it the scenario fails and the next one starts.
    pub limit: Duration,
    pub run: fn(&Ctx) -> Outcome,
    /// The boots it runs in: `v2` (cgroup2 at /sys/fs/cgroup), `v1` (a cgroup v1-only host).
    pub boots: &'static [&'static str],
}

/// Runs in both kinds of boot.
pub const BOTH: &[&str] = &["v2", "v1"];
/// Runs in the normal boot only.
pub const V2: &[&str] = &["v2"];
/// Runs in the cgroup v1-only boot only.
pub const V1: &[&str] = &["v1"];

impl Scenario {
    /// Whether it runs in a boot of this cgroup layout (`v2` or `v1`).
    pub fn runs_in(&self, boot: &str) -> bool {
        self.boots.contains(&boot)
    }

    /// Whether it needs the agent pointed at the ECS agent fixture (the `ecs_*` scenarios).
    pub fn needs_ecs(&self) -> bool {
        self.name.starts_with("ecs_")
    }
}

/// `pass`, `fail` or `skip`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Not run, with a reason; counts as passed only for the scenarios the report lists as legitimate
    /// skips (none today).
    Skip,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Skip => "skip",
        }
    }
}

/// What a scenario found.
pub struct Outcome {
    pub verdict: Verdict,
    pub detail: String,
    /// Evidence for matrix.json (records seen, kernel counters...).
    pub data: Value,
}

impl Outcome {
    pub fn pass(detail: impl Into<String>, data: Value) -> Outcome {
        Outcome { verdict: Verdict::Pass, detail: detail.into(), data }
    }
    pub fn fail(detail: impl Into<String>, data: Value) -> Outcome {
        Outcome { verdict: Verdict::Fail, detail: detail.into(), data }
    }
    pub fn skip(reason: impl Into<String>) -> Outcome {
        Outcome { verdict: Verdict::Skip, detail: reason.into(), data: Value::Null }
    }
}

/// The hook chosen for one capability, as `/status` says.
#[derive(Clone, Debug)]
pub struct Hook {
    pub capability: String,
    pub chosen: Option<String>,
    /// `(hook, reason)` of every candidate not used.
    pub rejected: Vec<(String, String)>,
}

impl Hook {
    /// The candidates that were tried and failed: `(hook, the key line of the reason)`.
    pub fn refused(&self) -> Vec<(String, String)> {
        self.rejected
            .iter()
            .filter(|(_, r)| !r.starts_with("not needed"))
            .map(|(h, r)| (h.clone(), key_reason(r)))
            .collect()
    }

    /// Why the capability has no hook: every candidate with the key line of its reason.
    pub fn refusal(&self) -> String {
        let tried: Vec<String> = self.refused().into_iter().map(|(h, r)| format!("{h}: {r}")).collect();
        if tried.is_empty() { "no candidate hook".to_string() } else { tried.join("; ") }
    }
}

/// Verifier log lines that say why a program was refused.
const VERIFIER_KEYS: &[&str] = &[
    "unknown func",
    "invalid func",
    "cannot use helper",
    "disallowed",
    "not allowed",
    "invalid access",
    "invalid mem access",
    "invalid bpf_context access",
    "invalid indirect",
    "unbounded",
    "too many",
    "misaligned",
    "!read_ok",
    "expected",
    "unreleased reference",
    "is not a",
];

/// The line of a refusal that matters: the verifier's complaint when there is a log (`"unknown func
/// bpf_get_socket_cookie#46"`), else the message before the log.
pub fn key_reason(reason: &str) -> String {
    let (head, log) = match reason.split_once("; verifier:") {
        Some((h, l)) => (h, Some(l)),
        None => (reason, None),
    };
    let from_log = log.and_then(|l| {
        l.split(['|', '\n'])
            .map(str::trim)
            .find(|line| VERIFIER_KEYS.iter().any(|k| line.contains(k)) && !line.starts_with(';'))
    });
    match from_log {
        // "eddy_state: the kernel refused to load it (...)" -> "eddy_state: <verifier line>"
        Some(line) => format!("{}: {line}", head.split(':').next().unwrap_or(head).trim()),
        None => head.lines().next().unwrap_or_default().trim().to_string(),
    }
}

/// The `hooks` array of a `/status` document.
pub fn parse_hooks(status: &Value) -> Vec<Hook> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    status["hooks"]
        .as_array()
        .map(|hooks| {
            hooks
                .iter()
                .map(|h| Hook {
                    capability: text(&h["capability"]),
                    chosen: h["chosen"].as_str().map(String::from),
                    rejected: h["rejected"]
                        .as_array()
                        .map(|r| r.iter().map(|x| (text(&x["hook"]), text(&x["reason"]))).collect())
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `Some(skip)` when the guest has no IPv6 loopback address (`::1`): IPv6 disabled at boot.
pub fn without_ipv6() -> Option<Outcome> {
    match std::net::UdpSocket::bind("[::1]:0") {
        Ok(_) => None,
        Err(e) => Some(Outcome::skip(format!("no IPv6 loopback in this guest (bind [::1]:0: {e})"))),
    }
}

/// What every scenario gets.
pub struct Ctx {
    pub agent: GuestAgent,
    pub hooks: Vec<Hook>,
    /// Connections of `tcp_churn`.
    pub churn: usize,
}

impl Ctx {
    pub fn hook(&self, capability: &str) -> Option<&Hook> {
        self.hooks.iter().find(|h| h.capability == capability)
    }

    /// `Some(reason)` when `/status` says the capability has no hook (the scenario then fails with it).
    pub fn unavailable(&self, capability: &str) -> Option<String> {
        match self.hook(capability) {
            None => Some(format!("/status lists no capability {capability:?}")),
            Some(h) if h.chosen.is_none() => {
                let mut why = h.refusal();
                // "... (see udp)": the root cause is another capability's refusal.
                for other in &self.hooks {
                    if other.capability != capability
                        && other.chosen.is_none()
                        && why.contains(&format!("(see {})", other.capability))
                    {
                        why.push_str(&format!("; {}: {}", other.capability, other.refusal()));
                    }
                }
                Some(format!("capability {capability} has no hook (/status): {}", clip(&why, 800)))
            }
            Some(_) => None,
        }
    }

    /// The chosen hook of a capability (`"none"` when there is none).
    pub fn chosen(&self, capability: &str) -> String {
        self.hook(capability).and_then(|h| h.chosen.clone()).unwrap_or_else(|| "none".to_string())
    }
}

/// `s` cut to `max` characters (with `…`), on one line.
pub fn clip(s: &str, max: usize) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

/// Result lines: to the results device (the VM's second serial port) and to stdout (the console).
pub struct Sink {
    file: Mutex<Option<File>>,
    kernel: String,
}

impl Sink {
    fn open(path: &PathBuf, kernel: String) -> Sink {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| eprintln!("cannot open the results device {}: {e} (stdout only)", path.display()))
            .ok();
        Sink { file: Mutex::new(file), kernel }
    }

    /// Writes one JSON line (`kernel` and `type` added).
    pub fn emit(&self, kind: &str, mut v: Value) {
        if let Some(o) = v.as_object_mut() {
            o.insert("kernel".into(), Value::String(self.kernel.clone()));
            o.insert("type".into(), Value::String(kind.into()));
        }
        let line = v.to_string();
        println!("EDDY-RESULT {line}");
        if let Some(f) = self.file.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            let _ = f.write_all(format!("{line}\n").as_bytes());
            let _ = f.flush();
            // A serial port transmits after write() returns: wait until it did (the VM powers off right
            // after the last line). Not a tty (a file on a host run): ENOTTY, nothing to wait for.
            // SAFETY: tcdrain(3) on a descriptor this struct owns.
            let _ = unsafe { libc::tcdrain(f.as_raw_fd()) };
        }
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// `eddy-matrix-guest guest ...`: returns whether every scenario passed.
pub fn guest_main(args: &[String]) -> Result<bool> {
    let started = Instant::now();
    let results = PathBuf::from(flag(args, "--results").unwrap_or("/dev/ttyS1"));
    let bin = PathBuf::from(flag(args, "--agent").unwrap_or("/bin/eddy-agent"));
    let churn: usize = flag(args, "--churn").unwrap_or("500").parse().context("--churn")?;
    let only: Option<Vec<&str>> = flag(args, "--only").map(|s| s.split(',').collect());
    let boot = flag(args, "--cgroup").unwrap_or("v2");
    anyhow::ensure!(boot == "v2" || boot == "v1", "--cgroup must be v2 or v1, not {boot:?}");
    let sink = Sink::open(&results, kernel_release());
    let version = std::fs::read_to_string("/proc/version").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    sink.emit("boot", json!({"proc_version": version.trim(), "cpus": cpus, "cgroup": boot}));
    let selected: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| s.runs_in(boot) && only.as_ref().is_none_or(|o| o.contains(&s.name)))
        .collect();
    // The ECS agent's introspection API (fixture) on loopback, for the agent of the ECS scenarios.
    let introspection = crate::ecs::serve_introspection();

    let addr: SocketAddr = AGENT_ADDR.parse().context("agent address")?;
    let mut extra: Vec<String> = [
        "--poll-interval",
        "200ms",
        "--closed-flow-retention",
        "100000",
        "--dns-timeout",
        "2s",
        "--aws-resolution",
        "off",
        "--ecs-api",
        "false",
        "--conntrack",
        "false",
        "--log-level",
        "info",
    ]
    .map(String::from)
    .to_vec();
    // Extra arguments from the harness (`--agent-arg`), one per line.
    if let Some(file) = flag(args, "--agent-args-file") {
        let text = std::fs::read_to_string(file).with_context(|| format!("read {file}"))?;
        extra.extend(text.lines().filter(|l| !l.is_empty()).map(String::from));
    }
    // The matrix tests the kernel programs: no silent fallback to sock_diag when eBPF cannot load
    // (then the agent exits and every scenario fails with its reason), unless asked for.
    if !extra.iter().any(|a| a == "--collector") {
        extra.extend(["--collector".to_string(), "ebpf".to_string()]);
    }
    let ecs_extra: Vec<String> = extra
        .iter()
        .cloned()
        .chain(
            ["--ecs-agent-uri", &format!("http://{introspection}"), "--ecs-refresh-interval", "1s"]
                .map(String::from),
        )
        .collect();
    // Phases, one agent each. The normal boot runs the kernel scenarios against an agent without ECS
    // (ECS labels on every record double the size of /flows, which the scenarios poll: under TCG that
    // doubles their time), then the ECS scenarios against an agent pointed at the fixture. The cgroup v1
    // boot has one agent, with ECS, for everything: the first agent of the boot is the one that finds
    // no cgroup2 and mounts its own.
    let phases: Vec<(&str, &[String], Vec<&Scenario>)> = if boot == "v1" {
        vec![("ecs", &ecs_extra, selected)]
    } else {
        let (ecs, plain): (Vec<&Scenario>, Vec<&Scenario>) =
            selected.into_iter().partition(|s| s.needs_ecs());
        vec![("plain", &extra, plain), ("ecs", &ecs_extra, ecs)]
    };
    let mut passed = 0;
    let mut total = 0;
    let mut agents_alive = true;
    for (phase, phase_args, list) in phases {
        if list.is_empty() {
            continue;
        }
        let agent_started = Instant::now();
        let agent = match GuestAgent::start(&bin, addr, phase_args, Duration::from_secs(240)) {
            Ok(a) => a,
            Err(e) => {
                let why = format!("the agent did not start: {e:#}");
                sink.emit(
                    "agent",
                    json!({"ready": false, "phase": phase, "detail": why, "args": phase_args}),
                );
                for s in &list {
                    total += 1;
                    sink.emit(
                        "scenario",
                        json!({"scenario": s.name, "result": "fail", "detail": clip(&why, 2000), "seconds": 0.0}),
                    );
                }
                continue;
            }
        };
        let startup = agent_started.elapsed().as_secs_f64();
        sink.emit(
            "agent",
            json!({"ready": true, "phase": phase, "startup_seconds": startup, "args": phase_args}),
        );
        let status = agent.get_json("/status").unwrap_or_else(|e| json!({"error": e}));
        let hooks = parse_hooks(&status);
        sink.emit("status", json!({"phase": "start", "agent": phase, "status": status}));

        let ctx = Arc::new(Ctx { agent, hooks, churn });
        for s in list {
            println!("--- scenario {} (limit {:?})", s.name, s.limit);
            let t0 = Instant::now();
            let o = run_one(&ctx, s);
            let secs = t0.elapsed().as_secs_f64();
            total += 1;
            if o.verdict == Verdict::Pass {
                passed += 1;
            }
            sink.emit(
                "scenario",
                json!({"scenario": s.name, "result": o.verdict.as_str(), "detail": o.detail,
                       "seconds": secs, "data": o.data}),
            );
        }
        let status = ctx.agent.get_json("/status").unwrap_or_else(|e| json!({"error": e}));
        sink.emit("status", json!({"phase": "end", "agent": phase, "status": status}));
        agents_alive &= ctx.agent.alive();
        // The next phase's agent takes the same port (a scenario thread left behind may still hold
        // the context: stop the process itself).
        ctx.agent.stop();
    }
    sink.emit(
        "done",
        json!({"seconds": started.elapsed().as_secs_f64(), "passed": passed, "total": total,
               "agent_alive": agents_alive}),
    );
    Ok(passed == total)
}

/// Runs one scenario on its own thread; a panic or the time limit makes it a failure.
fn run_one(ctx: &Arc<Ctx>, s: &Scenario) -> Outcome {
    let (tx, rx) = mpsc::channel();
    let c = Arc::clone(ctx);
    let run = s.run;
    let spawned = std::thread::Builder::new().name(s.name.to_string()).spawn(move || {
        let r = catch_unwind(AssertUnwindSafe(|| run(&c)));
        let _ = tx.send(r);
    });
    if let Err(e) = spawned {
        return Outcome::fail(format!("cannot spawn the scenario thread: {e}"), Value::Null);
    }
    match rx.recv_timeout(s.limit) {
        Ok(Ok(o)) => o,
        Ok(Err(panic)) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(no message)".into());
            Outcome::fail(format!("panicked: {}", clip(&msg, 1500)), Value::Null)
        }
        Err(_) => Outcome::fail(
            format!("did not finish within {:?} (the scenario thread is left behind)", s.limit),
            Value::Null,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_reason_picks_the_verifier_complaint() {
        let r = "eddy_state: the kernel refused to load it (Invalid argument (os error 22)); verifier:  \
                 R0=ptr_tcp_sock(id=0) | ; cookie = bpf_get_socket_cookie(sk); | \
                 19: (85) call bpf_get_socket_cookie#46 | unknown func bpf_get_socket_cookie#46 | \
                 verification time 3946 usec";
        assert_eq!(key_reason(r), "eddy_state: unknown func bpf_get_socket_cookie#46");
        assert_eq!(
            key_reason("eddy_send_tp: unknown BTF type `btf_trace_sock_send_length`"),
            "eddy_send_tp: unknown BTF type `btf_trace_sock_send_length`"
        );
        let r = "eddy_udp_egress: the kernel refused (x); verifier: 654: (7b) *(u64 *)(r9 +80) = r6 | \
                 R0=inv(id=0) refs=8 ";
        assert_eq!(key_reason(r), "eddy_udp_egress: the kernel refused (x)");
    }
}
