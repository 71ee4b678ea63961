//! The agent under soak: `eddy-agent run` with the task definition's environment, inside the
//! memory cgroup, its JSON lines counted (and the known connection's records kept).
//!
//! Unlike [`crate::RunAgent`] it never keeps all of stdout (hundreds of thousands of records):
//! it counts lines and bytes and keeps only the lines that mention `watch` (an address).

use std::collections::VecDeque;
use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::http::http_get;

/// What the agent wrote to stdout.
#[derive(Debug, Default)]
pub struct Stdout {
    pub lines: u64,
    pub bytes: u64,
    /// Lines that mention the watched address.
    pub watched: Vec<String>,
}

pub struct SoakAgent {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub pid: u32,
    pub stdout: Arc<Mutex<Stdout>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

/// `EDDY_*` variables of the task definition's container `container` (or the first one).
pub fn task_environment(task_definition: &Path, container: Option<&str>) -> Result<Vec<(String, String)>> {
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(task_definition)
            .with_context(|| format!("reading {}", task_definition.display()))?,
    )?;
    let c = doc["containerDefinitions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| container.is_none_or(|n| c["name"] == n)))
        .ok_or_else(|| anyhow!("{}: no container {container:?}", task_definition.display()))?;
    Ok(c["environment"]
        .as_array()
        .map(|env| {
            env.iter()
                .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
                .filter(|(k, _)| k.starts_with("EDDY_"))
                .collect()
        })
        .unwrap_or_default())
}

impl SoakAgent {
    /// Starts `bin run --listen 127.0.0.1:<free port>` with `env`, joining the cgroup whose
    /// `cgroup.procs` is `procs` before exec; waits (60 s) for `/readyz`.
    pub fn start(bin: &Path, env: &[(String, String)], procs: &Path, watch: String) -> Result<SoakAgent> {
        let addr = SocketAddr::from(([127, 0, 0, 1], crate::agent::free_loopback_port()));
        let args = vec!["run".to_string(), "--listen".to_string(), addr.to_string()];
        let mut cmd = crate::agent::command_for(bin, &args);
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let procs = CString::new(procs.as_os_str().as_bytes()).context("cgroup path")?;
        // SAFETY: the closure only makes async-signal-safe calls (see join_in_child).
        unsafe { cmd.pre_exec(move || super::cgroup::join_in_child(&procs)) };
        let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let stdout = Arc::new(Mutex::new(Stdout::default()));
        let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let kept = Arc::clone(&stdout);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let mut s = kept.lock().unwrap_or_else(PoisonError::into_inner);
                s.lines += 1;
                s.bytes += line.len() as u64 + 1;
                if line.contains(&watch) {
                    s.watched.push(line);
                }
            }
        });
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let err = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let tail = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut shown = 0;
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if (line.contains("WARN") || line.contains("ERROR")) && shown < 40 {
                    shown += 1;
                    eprintln!("[eddy-agent {pid}] {line}");
                }
                let mut t = tail.lock().unwrap_or_else(PoisonError::into_inner);
                if t.len() == 200 {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        let mut agent = SoakAgent { child: Some(child), addr, pid, stdout, stderr };
        let started = Instant::now();
        loop {
            if let Ok(r) = http_get(addr, "/readyz", Duration::from_secs(2))
                && r.status == 200
            {
                return Ok(agent);
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("eddy-agent not ready after 60 s; stderr:\n{}", agent.stderr_tail(30));
            }
            if !agent.running() {
                bail!("eddy-agent exited at startup; stderr:\n{}", agent.stderr_tail(30));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last `n` lines of stderr.
    pub fn stderr_tail(&self, n: usize) -> String {
        let t = self.stderr.lock().unwrap_or_else(PoisonError::into_inner);
        t.iter().skip(t.len().saturating_sub(n)).cloned().collect::<Vec<_>>().join("\n")
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `VmRSS` and `VmHWM` (bytes) from `/proc/PID/status`.
    pub fn rss(&self) -> (u64, u64) {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let kib = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        (kib("VmRSS:"), kib("VmHWM:"))
    }

    /// SIGTERM, then the exit status (SIGKILL after 20 s, the task definition's `stopTimeout`).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SoakAgent {
    fn drop(&mut self) {
        self.stop();
    }
}
