//! Step 7 of the benchmark: the memory of `eddy-agent capture` under the steady load of step 6
//! ([`super::cost::HOLD`] connections open before the window, [`super::cost::RATE`] new ones a
//! second inside it), from just after start-up (`VmHWM` reset once `capture started` is
//! logged and a drain has passed) until the process exits, so the window's end (the last
//! labelling pass and the printing of what was held) is in the peak.
//!
//! Limits: loopback only, as root (`clear_refs`, `RLIMIT_NOFILE`).

use std::io::{BufRead, BufReader};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use serde::Serialize;

use super::cost::{HOLD, Load, RSS_TARGET_MIB, raise_nofile};
use super::procs::{self, Proc};
use super::{Bench, DRAIN};

/// Seconds of window after the load (the last scan and the end).
const TAIL_SECS: u64 = 4;

/// `capture`'s memory under the steady load.
#[derive(Clone, Debug, Serialize)]
pub struct CaptureMemory {
    pub held_connections: usize,
    /// Short connections opened inside the window (two records each: both ends are here).
    pub connections: u64,
    pub seconds: f64,
    /// Records printed.
    pub records: u64,
    /// `VmHWM` from after start-up to the exit, KiB.
    pub rss_peak_kib: u64,
    pub exit_status: i32,
}

impl CaptureMemory {
    /// Every short connection printed (both ends), a clean exit, and the peak within the target.
    pub fn ok(&self) -> bool {
        self.exit_status == 0
            && self.records >= 2 * self.connections
            && self.rss_peak_kib as f64 / 1024.0 <= RSS_TARGET_MIB
    }
}

impl Bench {
    /// Step 7 (see the module docs); the files are `capture-steady.jsonl` and `capture-steady.log`.
    pub fn capture_memory(&self) -> Result<CaptureMemory> {
        raise_nofile(2 * HOLD as u64 + 1_024)?;
        let load = Load::start()?;
        let held = load.hold(HOLD)?;
        let seconds = self.duration_secs.max(5);
        let out = self.work.join("capture-steady.jsonl");
        let log = self.work.join("capture-steady.log");
        let mut args =
            vec!["capture".to_string(), "--duration".to_string(), format!("{}s", seconds + TAIL_SECS)];
        args.extend(self.agent_args.iter().cloned());
        let mut cmd = procs::agent_command(&self.agent, &args);
        cmd.stdout(procs::output_file(&out)?).stderr(procs::output_file(&log)?);
        let mut capture = Proc::spawn(cmd)?;
        super::churn::wait_started(&mut capture, &log)?;
        thread::sleep(DRAIN);
        let pid = capture.pid;
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").context("resetting the capture's VmHWM")?;
        let (connections, secs) = load.paced(seconds as f64)?;
        let mut peak = 0;
        let deadline = Instant::now() + Duration::from_secs(TAIL_SECS + 60);
        while capture.running() {
            if let Some(kib) = procs::status_kib(pid, "VmHWM") {
                peak = peak.max(kib);
            }
            if Instant::now() >= deadline {
                capture.signal(Signal::SIGKILL);
                bail!("eddy-agent capture still running 60 s after its window (log: {})", log.display());
            }
            thread::sleep(Duration::from_millis(50));
        }
        let exit_status = procs::status_code(capture.wait()?);
        drop(held);
        load.stop();
        let file = std::fs::File::open(&out).with_context(|| format!("opening {}", out.display()))?;
        let records =
            BufReader::new(file).lines().map_while(Result::ok).filter(|l| !l.is_empty()).count() as u64;
        Ok(CaptureMemory {
            held_connections: HOLD,
            connections,
            seconds: secs,
            records,
            rss_peak_kib: peak,
            exit_status,
        })
    }
}

/// The capture memory line, with its target.
pub fn render(out: &mut String, m: &CaptureMemory) {
    use std::fmt::Write as _;
    let verdict = if m.exit_status != 0 {
        format!("  <-- MISSED (exit status {})", m.exit_status)
    } else if m.records < 2 * m.connections {
        format!("  <-- MISSED ({} records, fewer than both ends of every connection)", m.records)
    } else if m.ok() {
        String::new()
    } else {
        "  <-- MISSED".to_string()
    };
    let _ = writeln!(
        out,
        "capture RSS under the same load ({} connections held before the window, {} short connections in {:.1} s, \
         {} records printed): peak {:.1} MiB (VmHWM reset after start-up, read until it exited) (target: peak <= \
         {RSS_TARGET_MIB} MiB){verdict}",
        m.held_connections,
        m.connections,
        m.seconds,
        m.records,
        m.rss_peak_kib as f64 / 1024.0,
    );
}
