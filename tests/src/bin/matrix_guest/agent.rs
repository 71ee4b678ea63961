//! The agent under test in the guest: `eddy-agent run` on a fixed loopback port, with the AWS SDK fenced
//! off (no IMDS, no endpoint but a closed loopback port: [`eddy_tests::command_for`]), its stderr echoed
//! to the console and kept for failure messages.
//!
//! Unlike [`eddy_tests::RunAgent`] nothing here panics, and start-up may take minutes: under TCG every
//! program the agent loads (and every candidate it probes) goes through the verifier 10–30× slower.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use eddy_tests::{FlowRecord, http_get};
use serde_json::Value;

/// A running agent; SIGKILLed on drop (the VM powers off right after anyway).
pub struct GuestAgent {
    child: Mutex<Child>,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl GuestAgent {
    /// Starts `bin run --listen addr extra…` and waits up to `deadline` for `/readyz` = 200.
    pub fn start(bin: &Path, addr: SocketAddr, extra: &[String], deadline: Duration) -> Result<GuestAgent> {
        let mut args = vec!["run".to_string(), "--listen".to_string(), addr.to_string()];
        args.extend(extra.iter().cloned());
        let mut child = eddy_tests::command_for(bin, &args)
            .spawn()
            .with_context(|| format!("spawn {} {}", bin.display(), args.join(" ")))?;
        println!("started {} {} (pid {})", bin.display(), args.join(" "), child.id());
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().context("agent stderr is not piped")?;
        let kept = Arc::clone(&log);
        std::thread::Builder::new().name("agent-stderr".into()).spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                println!("[agent] {line}");
                kept.lock().unwrap_or_else(PoisonError::into_inner).push(line);
            }
        })?;
        // --output none: stdout stays empty, but drain it so the agent can never block on it.
        if let Some(mut out) = child.stdout.take() {
            std::thread::Builder::new().name("agent-stdout".into()).spawn(move || {
                let _ = std::io::copy(&mut out, &mut std::io::sink());
            })?;
        }
        let agent = GuestAgent { child: Mutex::new(child), addr, log };
        let started = Instant::now();
        let mut last: String;
        loop {
            if let Ok(Some(status)) = agent.child().try_wait() {
                std::thread::sleep(Duration::from_millis(300));
                bail!(
                    "eddy-agent exited ({status}) before /readyz answered 200; stderr:\n{}",
                    agent.log_tail(40)
                );
            }
            match http_get(addr, "/readyz", Duration::from_secs(5)) {
                Ok(r) if r.status == 200 => break,
                Ok(r) => last = format!("/readyz {}: {}", r.status, r.text()),
                Err(e) => last = format!("/readyz: {e}"),
            }
            if started.elapsed() > deadline {
                bail!(
                    "eddy-agent not ready within {deadline:?} (last: {last}); stderr:\n{}",
                    agent.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        println!("eddy-agent ready after {:.1}s", started.elapsed().as_secs_f64());
        Ok(agent)
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last `n` lines of the agent's stderr.
    pub fn log_tail(&self, n: usize) -> String {
        let lines = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Stops the agent (SIGKILL) and waits for it to exit.
    pub fn stop(&self) {
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether the agent process is still running.
    pub fn alive(&self) -> bool {
        matches!(self.child().try_wait(), Ok(None))
    }

    /// `GET path` as JSON (status 200 required).
    pub fn get_json(&self, path: &str) -> Result<Value, String> {
        let r = http_get(self.addr, path, Duration::from_secs(20)).map_err(|e| {
            let dead = if self.alive() { "" } else { " (the agent has exited)" };
            format!("GET {path}: {e}{dead}")
        })?;
        if r.status != 200 {
            return Err(format!("GET {path}: status {}: {}", r.status, r.text()));
        }
        serde_json::from_slice(&r.body).map_err(|e| format!("GET {path}: not JSON ({e})"))
    }

    /// `GET /flows` as records.
    pub fn flows(&self) -> Result<Vec<FlowRecord>, String> {
        let v = self.get_json("/flows")?;
        serde_json::from_value(v).map_err(|e| format!("GET /flows: not an array of flow records ({e})"))
    }
}

impl Drop for GuestAgent {
    fn drop(&mut self) {
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }
}
