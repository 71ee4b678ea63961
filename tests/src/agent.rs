//! The `eddy-agent` process under test, in `capture` mode ([`Capture`]) and `run` mode ([`RunAgent`]).
//!
//! The binary is `$EDDY_TEST_AGENT_BIN`, else `<dir of the test exe>/../eddy-agent` (test executables live in
//! `target/<profile>/deps/`). It must be built first: `cargo build -p eddy-agent`. The child gets no `EDDY_*`
//! variable from the tests (the agent rejects unknown ones): `EDDY_TEST_*` variables are removed.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::flow::FlowRecord;
use crate::http::{HttpResponse, http_get};

/// Env var naming the agent binary explicitly.
pub const AGENT_BIN_ENV: &str = "EDDY_TEST_AGENT_BIN";

/// How long the agent may take to load and attach its programs.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// Path of the agent binary; panics with how to build it when it is missing.
pub fn agent_bin() -> PathBuf {
    let path = match std::env::var_os(AGENT_BIN_ENV) {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            let deps = exe.parent().expect("test exe has a parent directory");
            deps.join("..").join("eddy-agent")
        }
    };
    assert!(
        path.is_file(),
        "agent binary {} not found: run `cargo build -p eddy-agent` first (or set {AGENT_BIN_ENV})",
        path.display()
    );
    path
}

/// Formats a duration the way the agent's flags take it (`10s`, `200ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) { format!("{}s", ms / 1000) } else { format!("{ms}ms") }
}

/// Where the AWS SDK inside the agent is pointed unless a test points it at moto: a
/// closed loopback port, so no test can ever reach a real AWS endpoint or IMDS.
pub const AWS_NOWHERE: &str = "http://127.0.0.1:9";

/// The agent binary with `args`, piped stdio, the tests' own `EDDY_TEST_*` variables
/// removed, and the AWS SDK environment fenced to loopback (override with `cmd.env`).
pub fn agent_command(args: &[String]) -> Command {
    command_for(&agent_bin(), args)
}

/// Like [`agent_command`] with another copy of the binary.
pub fn command_for(bin: &std::path::Path, args: &[String]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("EDDY_TEST_") || k.starts_with("AWS_") {
            cmd.env_remove(&key);
        }
    }
    cmd.envs([
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_ENDPOINT_URL", AWS_NOWHERE),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    ]);
    cmd
}

/// Shared agent stderr lines.
#[derive(Clone, Default)]
pub struct AgentLog(Arc<Mutex<Vec<String>>>);

impl AgentLog {
    fn push(&self, line: String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    /// The hook the agent logged as chosen for `capability` (`INFO hook capability="…"
    /// chosen="…"`); `None` before it was logged, `Some("none")` when nothing loaded.
    pub fn chosen_hook(&self, capability: &str) -> Option<String> {
        let lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = format!(" hook capability=\"{capability}\" chosen=");
        lines.iter().find_map(|l| {
            let rest = &l[l.find(&key)? + key.len()..];
            let rest = rest.strip_prefix('"').unwrap_or(rest);
            Some(rest.split('"').next().unwrap_or(rest).trim_end().to_string())
        })
    }

    /// The last `n` lines, one per line.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let start = lines.len().saturating_sub(n);
        lines[start..].join("\n")
    }
}

/// Reads stderr lines, echoes them to the test's stderr, stores them, and signals `marker` once.
fn spawn_stderr_reader(
    stderr: ChildStderr,
    pid: u32,
    log: AgentLog,
    marker: Option<(&'static str, mpsc::Sender<()>)>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("agent-{pid}-stderr"))
        .spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut buf = Vec::new();
            let mut marker = marker;
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                eprintln!("[eddy-agent {pid}] {line}");
                if let Some((text, tx)) = &marker
                    && line.contains(text)
                {
                    let _ = tx.send(());
                    marker = None;
                }
                log.push(line);
            }
        })
        .expect("spawn stderr reader")
}

fn stop_child(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Options of `eddy-agent capture`.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    pub duration: Duration,
    pub flow_map_entries: Option<u32>,
    pub poll_interval: Option<Duration>,
    pub log_level: Option<String>,
    /// Further flags, e.g. `--disabled-hooks X` to exercise a fallback hook.
    pub extra_args: Vec<String>,
    /// Extra environment variables (e.g. `AWS_ENDPOINT_URL` of a moto server).
    pub env: Vec<(String, String)>,
}

impl CaptureOptions {
    pub fn new(duration: Duration) -> CaptureOptions {
        CaptureOptions {
            duration,
            flow_map_entries: None,
            poll_interval: None,
            log_level: Some("info".to_string()),
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Capture with some hook candidates disabled (names as in `/status`).
    pub fn with_disabled_hooks(duration: Duration, hooks: &[&str]) -> CaptureOptions {
        let mut o = CaptureOptions::new(duration);
        if !hooks.is_empty() {
            o.extra_args = vec!["--disabled-hooks".to_string(), hooks.join(",")];
        }
        o
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec!["capture".to_string(), "--duration".to_string(), format_duration(self.duration)];
        if let Some(n) = self.flow_map_entries {
            args.extend(["--flow-map-entries".to_string(), n.to_string()]);
        }
        if let Some(p) = self.poll_interval {
            args.extend(["--poll-interval".to_string(), format_duration(p)]);
        }
        if let Some(l) = &self.log_level {
            args.extend(["--log-level".to_string(), l.clone()]);
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// A running `eddy-agent capture`; started means attached (`capture started` was logged).
pub struct Capture {
    child: Child,
    opts: CaptureOptions,
    started: Instant,
    log: AgentLog,
    stdout: Option<JoinHandle<std::io::Result<Vec<u8>>>>,
    stderr: Option<JoinHandle<()>>,
}

impl Capture {
    /// Starts a capture of `duration` and waits until it is attached.
    pub fn start(duration: Duration) -> Capture {
        Capture::start_with(CaptureOptions::new(duration))
    }

    /// Starts a capture with options and waits (up to 30 s) until it logs `capture started`.
    pub fn start_with(opts: CaptureOptions) -> Capture {
        let args = opts.args();
        let spawned_at = Instant::now();
        let mut child = agent_command(&args)
            .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} {}: {e}", agent_bin().display(), args.join(" ")));
        let pid = child.id();
        eprintln!("started eddy-agent {} (pid {pid})", args.join(" "));
        let log = AgentLog::default();
        let (tx, rx) = mpsc::channel();
        let stderr = spawn_stderr_reader(
            child.stderr.take().expect("piped stderr"),
            pid,
            log.clone(),
            Some(("capture started", tx)),
        );
        let mut out = child.stdout.take().expect("piped stdout");
        let stdout = std::thread::Builder::new()
            .name(format!("agent-{pid}-stdout"))
            .spawn(move || {
                let mut buf = Vec::new();
                out.read_to_end(&mut buf).map(|_| buf)
            })
            .expect("spawn stdout reader");
        let mut capture =
            Capture { child, opts, started: Instant::now(), log, stdout: Some(stdout), stderr: Some(stderr) };
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stderr closed: the process is exiting; fall through to the exit check.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            if let Ok(Some(status)) = capture.child.try_wait() {
                capture.join_stderr();
                panic!(
                    "eddy-agent {} exited ({status}) before logging `capture started`; stderr:\n{}",
                    args.join(" "),
                    capture.log.tail(60)
                );
            }
            if spawned_at.elapsed() > STARTUP_DEADLINE {
                panic!(
                    "eddy-agent {} did not log `capture started` within {STARTUP_DEADLINE:?}; stderr:\n{}",
                    args.join(" "),
                    capture.log.tail(60)
                );
            }
        }
        capture.started = Instant::now();
        eprintln!("capture attached after {:?}", capture.started - spawned_at);
        capture
    }

    /// The agent's process id.
    /// The hook chosen for `capability`, as the agent logged it at start.
    pub fn chosen_hook(&self, capability: &str) -> Option<String> {
        self.log.chosen_hook(capability)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time left in the capture window.
    pub fn remaining(&self) -> Duration {
        self.opts.duration.saturating_sub(self.started.elapsed())
    }

    /// Panics unless at least 300 ms of the window are left (traffic that ends after the window is not counted).
    pub fn assert_window_open(&self, what: &str) {
        let elapsed = self.started.elapsed();
        assert!(
            elapsed + Duration::from_millis(300) < self.opts.duration,
            "{what} ended {elapsed:?} after the capture started: too close to the end of the {:?} window; \
             give the capture a longer --duration",
            self.opts.duration
        );
    }

    fn join_stderr(&mut self) {
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
    }

    /// Waits for the end of the window and the exit (status 0), and parses stdout's JSON lines.
    pub fn finish(self) -> Vec<FlowRecord> {
        let records: Vec<FlowRecord> = self.finish_lines();
        eprintln!("capture finished: {} flow records", records.len());
        records
    }

    /// [`Capture::finish`] as JSON values (every field the agent prints).
    pub fn finish_json(self) -> Vec<serde_json::Value> {
        self.finish_lines()
    }

    fn finish_lines<T: serde::de::DeserializeOwned>(mut self) -> Vec<T> {
        let deadline = self.started + self.opts.duration + Duration::from_secs(30);
        let status: ExitStatus = loop {
            if let Some(status) = self.child.try_wait().expect("wait for eddy-agent") {
                break status;
            }
            if Instant::now() > deadline {
                stop_child(&mut self.child, Duration::from_secs(2));
                panic!(
                    "eddy-agent capture --duration {:?} still running 30 s after its window; stderr:\n{}",
                    self.opts.duration,
                    self.log.tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.join_stderr();
        let stdout = self
            .stdout
            .take()
            .expect("stdout reader")
            .join()
            .expect("stdout reader thread")
            .expect("read agent stdout");
        assert!(status.success(), "eddy-agent capture exited with {status}; stderr:\n{}", self.log.tail(60));
        let text = String::from_utf8_lossy(&stdout);
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("agent printed a line that is not a flow record ({e}): {l}"))
            })
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(3));
    }
}

/// Picks a free loopback TCP port (bind to port 0, then release it).
pub fn free_loopback_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// How [`RunAgent::start_with`] starts the agent.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Run as this user and group id (e.g. 65534, `nobody`); needs `bin`.
    pub uid: Option<u32>,
    /// The binary to run (a copy that the user can execute: see [`unprivileged_copy`]).
    pub bin: Option<PathBuf>,
}

/// A copy of the agent binary that any user can execute (the build tree may not be traversable by an
/// unprivileged user); removed on drop.
pub struct BinCopy(pub PathBuf);

impl Drop for BinCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Copies the agent binary to a world-executable temporary file.
pub fn unprivileged_copy(tag: &str) -> BinCopy {
    use std::os::unix::fs::PermissionsExt as _;
    let copy = std::env::temp_dir().join(format!("eddy-agent-{tag}-{}", std::process::id()));
    std::fs::copy(agent_bin(), &copy).expect("copy agent");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    BinCopy(copy)
}

/// A running `eddy-agent run --listen 127.0.0.1:PORT`; SIGTERM on drop.
pub struct RunAgent {
    child: Option<Child>,
    addr: SocketAddr,
    log: AgentLog,
    stdout: AgentLog,
}

impl RunAgent {
    /// Every line the agent wrote to stdout so far (`--output jsonl`).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Starts `eddy-agent run --listen 127.0.0.1:<free port> <extra>` and waits until `/readyz` is 200.
    pub fn start(extra: &[&str]) -> RunAgent {
        RunAgent::start_with(extra, &RunOptions::default())
    }

    /// [`RunAgent::start`] with extra environment variables (e.g. `AWS_ENDPOINT_URL` of a moto server).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> RunAgent {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        RunAgent::start_with(extra, &RunOptions { env, ..Default::default() })
    }

    /// Like [`RunAgent::start`], with extra environment variables and, optionally, as another user.
    ///
    /// The agent joins the network namespace of the calling thread: call this (and every request to the
    /// agent) from a thread inside the namespace (e.g. within [`crate::NetNs::run`]).
    pub fn start_with(extra: &[&str], opts: &RunOptions) -> RunAgent {
        let port = free_loopback_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut args = vec!["run".to_string(), "--listen".to_string(), addr.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = match &opts.bin {
            Some(bin) => command_for(bin, &args),
            None => agent_command(&args),
        };
        if let Some(uid) = opts.uid {
            use std::os::unix::process::CommandExt as _;
            assert!(opts.bin.is_some(), "RunOptions::uid needs RunOptions::bin (see unprivileged_copy)");
            cmd.uid(uid).gid(uid);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child =
            cmd.spawn().unwrap_or_else(|e| panic!("spawn {} {}: {e}", agent_bin().display(), args.join(" ")));
        let pid = child.id();
        eprintln!("started eddy-agent {} (pid {pid})", args.join(" "));
        let log = AgentLog::default();
        spawn_stderr_reader(child.stderr.take().expect("piped stderr"), pid, log.clone(), None);
        // Drain stdout (kept for `stdout_lines`) so the agent never blocks on a full pipe.
        let out = child.stdout.take().expect("piped stdout");
        let stdout = AgentLog::default();
        let kept = stdout.clone();
        std::thread::Builder::new()
            .name(format!("agent-{pid}-stdout"))
            .spawn(move || {
                for line in BufReader::new(out).lines() {
                    match line {
                        Ok(l) => kept.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(l),
                        Err(_) => break,
                    }
                }
            })
            .expect("spawn stdout reader");
        let mut agent = RunAgent { child: Some(child), addr, log, stdout };
        let started = Instant::now();
        let mut last: String;
        loop {
            if let Some(child) = agent.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "eddy-agent {} exited ({status}) before /readyz answered 200; stderr:\n{}",
                    args.join(" "),
                    agent.log.tail(60)
                );
            }
            match http_get(addr, "/readyz", Duration::from_secs(2)) {
                Ok(r) if r.status == 200 => break,
                Ok(r) => last = format!("/readyz {}: {}", r.status, r.text()),
                Err(e) => last = format!("/readyz: {e}"),
            }
            assert!(
                started.elapsed() < STARTUP_DEADLINE,
                "eddy-agent {} not ready within {STARTUP_DEADLINE:?} (last: {last}); stderr:\n{}",
                args.join(" "),
                agent.log.tail(60)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("eddy-agent ready after {:?}", started.elapsed());
        agent
    }

    /// The agent's process id (until terminated).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The HTTP listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The agent's stderr so far (last `n` lines).
    pub fn log_tail(&self, n: usize) -> String {
        self.log.tail(n)
    }

    /// `GET path`; panics when the request fails.
    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(self.addr, path, Duration::from_secs(10)).unwrap_or_else(|e| {
            panic!("GET {path} on eddy-agent {}: {e}; stderr:\n{}", self.addr, self.log.tail(40))
        })
    }

    /// `GET path`, asserting 200 and a JSON body.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: status {} body {}", r.status, r.text());
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("GET {path}: body is not JSON ({e}): {}", r.text()))
    }

    /// `GET /flows` as records: every flow the agent holds, up to the API's largest `limit`
    /// (panics if the answer says it was truncated).
    pub fn flows(&self) -> Vec<FlowRecord> {
        let r = self.get("/flows?limit=100000");
        assert_eq!(r.status, 200, "GET /flows: status {} body {}", r.status, r.text());
        assert_ne!(r.header("x-eddy-flows-truncated"), Some("true"), "GET /flows: more than 100000 flows");
        serde_json::from_slice(&r.body).unwrap_or_else(|e| {
            let text = r.text();
            let cut = text.char_indices().nth(2000).map_or(text.len(), |(i, _)| i);
            panic!("GET /flows: not an array of flow records ({e}): {}", &text[..cut])
        })
    }

    /// `GET /status`.
    pub fn status(&self) -> serde_json::Value {
        self.get_json("/status")
    }

    /// Waits up to `timeout` for the agent to exit on its own; `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("agent already terminated");
            if let Some(status) = child.try_wait().expect("wait for eddy-agent") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every stderr line so far that contains `text`.
    pub fn log_lines_with(&self, text: &str) -> Vec<String> {
        let lines = self.log.0.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().filter(|l| l.contains(text)).cloned().collect()
    }

    /// Sends SIGTERM and waits (up to 10 s) for the exit; returns the status and how long the exit took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("agent already terminated");
        let sent = Instant::now();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("send SIGTERM to eddy-agent");
        loop {
            if let Some(status) = child.try_wait().expect("wait for eddy-agent") {
                return (status, sent.elapsed());
            }
            if sent.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("eddy-agent did not exit within 10 s of SIGTERM; stderr:\n{}", self.log.tail(40));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RunAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(5));
        }
    }
}
