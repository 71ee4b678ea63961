//! Step 5 of the benchmark: `eddy-agent capture` while `eddy-loadgen churn` opens COUNT short
//! connections (client sends 100 B, server answers 200 B), and the match of the loadgen's
//! client-side 4-tuples against the capture's records.
//!
//! The capture's JSON lines are read as [`FlowRecord`]s (the tests' type); a line that is not JSON, or
//! not a flow record, counts as unparsable. A connection is exact when a `tcp` `outgoing` record of its
//! 4-tuple has `bytes_sent` = 100 and `bytes_received` = 200 (IPv4-mapped IPv6 addresses compare as
//! IPv4). A 4-tuple the kernel reused within the run needs as many records as it occurred.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use serde::Deserialize;

use super::Bench;
use super::measure::{Results, Test, Variant};
use super::procs::{self, Proc, note};
use crate::flow::FlowRecord;

/// What the client sends and the server answers in each churn connection.
pub const EXACT: (u64, u64) = (100, 200);

/// The loadgen's churn summary.
#[derive(Clone, Debug, Deserialize)]
pub struct ChurnSummary {
    pub connections: u64,
    pub requested: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub errors: u64,
    pub server_errors: u64,
    pub repeated_tuples: u64,
    pub truncated: bool,
    #[serde(default)]
    pub error_samples: Vec<String>,
}

/// How the churn run went.
#[derive(Clone, Debug)]
pub struct ChurnRun {
    pub summary: ChurnSummary,
    /// Seconds from `capture started` to the end of the churn, rounded to 0.1.
    pub elapsed: f64,
    pub capture_secs: u64,
    /// The capture's CPU ticks during the churn.
    pub capture_ticks: u64,
    pub capture_hwm_kib: u64,
    pub capture_status: i32,
}

/// The capture matched against the churn's 4-tuples.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChurnMatch {
    /// Non-empty lines of the capture.
    pub lines: u64,
    pub tcp_outgoing: u64,
    pub unparsable: u64,
    pub exact: u64,
    pub wrong: u64,
    /// `(bytes_sent, bytes_received)` of wrong records and how often, in order of first occurrence.
    pub wrong_kinds: Vec<((u64, u64), u64)>,
    /// The first capture line that is JSON.
    pub first_record: Option<String>,
}

type Key = (IpAddr, u16, IpAddr, u16);

fn key(local: SocketAddr, remote: SocketAddr) -> Key {
    (local.ip().to_canonical(), local.port(), remote.ip().to_canonical(), remote.port())
}

/// Seconds of capture: the churn at the agent's median connection rate (at least 500/s; 1000/s if
/// there is none), three times over, plus margin for the final drain; at least 20.
pub fn capture_secs(results: &Results, count: u64) -> u64 {
    let rates: Vec<f64> = results
        .samples
        .iter()
        .filter(|s| s.test == Test::ConnRate && s.variant == Variant::Agent)
        .map(|s| s.value)
        .collect();
    let rate = if rates.is_empty() { 1000.0 } else { super::report::median(&rates).max(500.0) };
    ((3.0 * count as f64 / rate).ceil() as u64 + 10).max(20)
}

impl Bench {
    /// Runs the capture and the churn; the files are `capture.jsonl`, `capture.log`,
    /// `churn-tuples.txt`, `churn.json` and `churn.err` in the work directory.
    pub fn churn(&self, results: &Results) -> Result<ChurnRun> {
        let capture_secs = capture_secs(results, self.count);
        let cap_out = self.work.join("capture.jsonl");
        let cap_err = self.work.join("capture.log");
        let tuples = self.work.join("churn-tuples.txt");
        note(&format!(
            "churn: eddy-agent capture --duration {capture_secs}s, eddy-loadgen churn --count {}",
            self.count
        ));
        procs::wait_quiet(&[])?;
        let mut args = vec!["capture".to_string(), "--duration".to_string(), format!("{capture_secs}s")];
        args.extend(self.agent_args.iter().cloned());
        let mut cmd = procs::agent_command(&self.agent, &args);
        cmd.stdout(procs::output_file(&cap_out)?).stderr(procs::output_file(&cap_err)?);
        let mut capture = Proc::spawn(cmd)?;
        wait_started(&mut capture, &cap_err)?;
        let t0 = Instant::now();
        let c0 = procs::cpu_ticks(capture.pid).unwrap_or(0);
        // Stop the churn well before the capture ends, whatever happens.
        let churn_json = self.work.join("churn.json");
        let churn_err = self.work.join("churn.err");
        let mut cmd = Command::new(&self.loadgen);
        cmd.args(["churn", "--count", &self.count.to_string(), "--out"])
            .arg(&tuples)
            .args(["--max-duration", &format!("{}s", capture_secs.saturating_sub(5))])
            .stdout(procs::output_file(&churn_json)?)
            .stderr(procs::output_file(&churn_err)?);
        if !Proc::spawn(cmd)?.wait()?.success() {
            bail!(
                "eddy-loadgen churn failed: {}",
                std::fs::read_to_string(&churn_err).unwrap_or_default().trim_end()
            );
        }
        let elapsed = (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0;
        let c1 = procs::cpu_ticks(capture.pid).unwrap_or(c0);
        let hwm = procs::status_kib(capture.pid, "VmHWM").unwrap_or(0);
        let text = std::fs::read_to_string(&churn_json).context("reading churn.json")?;
        note(&format!("churn: {}", text.trim_end()));
        let summary: ChurnSummary = serde_json::from_str(text.trim())
            .with_context(|| format!("churn.json is not an eddy-loadgen churn summary: {}", text.trim()))?;
        note(&format!("churn done {elapsed:.1}s after 'capture started'; waiting for the capture to end"));
        let deadline = Instant::now() + Duration::from_secs(capture_secs + 60);
        while capture.running() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(500));
        }
        if capture.running() {
            note("warning: eddy-agent capture still running 60 s after its --duration; sending SIGINT");
            capture.signal(Signal::SIGINT);
            thread::sleep(Duration::from_secs(5));
            capture.signal(Signal::SIGKILL);
        }
        let capture_status = procs::status_code(capture.wait()?);
        if capture_status != 0 {
            note(&format!(
                "warning: eddy-agent capture exited with status {capture_status} (log: {})",
                cap_err.display()
            ));
        }
        Ok(ChurnRun {
            summary,
            elapsed,
            capture_secs,
            capture_ticks: c1.saturating_sub(c0),
            capture_hwm_kib: hwm,
            capture_status,
        })
    }
}

/// Waits (up to 60 s) for `eddy-agent capture` to log `capture started` in `log`.
pub fn wait_started(capture: &mut Proc, log: &Path) -> Result<()> {
    let mut i = 0;
    while !std::fs::read_to_string(log).unwrap_or_default().contains("capture started") {
        if !capture.running() {
            eprintln!("{}", procs::tail(log, 20));
            bail!("eddy-agent capture exited before 'capture started' (log: {})", log.display());
        }
        if i >= 600 {
            bail!("no 'capture started' from eddy-agent capture after 60 s (log: {})", log.display());
        }
        i += 1;
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The churn's 4-tuples (`CLIENT:PORT SERVER:PORT` per line), in file order with their counts.
pub fn read_tuples(path: &Path) -> Result<Vec<(Key, u64)>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut order: Vec<(Key, u64)> = Vec::new();
    let mut index: HashMap<Key, usize> = HashMap::new();
    for line in BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        let mut parts = line.split_whitespace();
        let (Some(local), Some(remote), None) = (parts.next(), parts.next(), parts.next()) else {
            bail!("{}: not `LOCAL REMOTE`: {line}", path.display());
        };
        let parse = |s: &str| s.parse::<SocketAddr>().with_context(|| format!("{}: {s}", path.display()));
        let k = key(parse(local)?, parse(remote)?);
        let i = *index.entry(k).or_insert_with(|| {
            order.push((k, 0));
            order.len() - 1
        });
        order[i].1 += 1;
    }
    Ok(order)
}

/// Matches the capture's lines (`capture`) against the expected 4-tuples.
pub fn match_capture(capture: impl BufRead, expected: &[(Key, u64)]) -> Result<ChurnMatch> {
    let mut m = ChurnMatch::default();
    let mut records: HashMap<Key, Vec<(u64, u64)>> = HashMap::new();
    for line in capture.lines() {
        let line = line.context("reading the capture")?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        m.lines += 1;
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            m.unparsable += 1;
            continue;
        };
        if m.first_record.is_none() {
            m.first_record = Some(line.to_string());
        }
        let Ok(r) = FlowRecord::deserialize(&value) else {
            m.unparsable += 1;
            continue;
        };
        if r.protocol != "tcp" || r.direction != "outgoing" {
            continue;
        }
        records
            .entry(key(r.local.socket_addr(), r.remote.socket_addr()))
            .or_default()
            .push((r.bytes_sent, r.bytes_received));
        m.tcp_outgoing += 1;
    }
    let mut kinds: Vec<((u64, u64), u64)> = Vec::new();
    for (k, n) in expected {
        let recs = records.get(k).map(Vec::as_slice).unwrap_or_default();
        let good = recs.iter().filter(|r| **r == EXACT).count() as u64;
        let matched = (*n).min(good);
        let bad: Vec<(u64, u64)> = recs.iter().copied().filter(|r| *r != EXACT).collect();
        m.exact += matched;
        m.wrong += (n - matched).min(bad.len() as u64);
        for b in bad.into_iter().take((n - matched) as usize) {
            match kinds.iter_mut().find(|(kind, _)| *kind == b) {
                Some((_, count)) => *count += 1,
                None => kinds.push((b, 1)),
            }
        }
    }
    m.wrong_kinds = kinds;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(local: &str, remote: &str, direction: &str, sent: u64, received: u64) -> String {
        let (la, lp) = local.rsplit_once(':').expect("local");
        let (ra, rp) = remote.rsplit_once(':').expect("remote");
        format!(
            r#"{{"protocol":"tcp","family":"ipv4","direction":"{direction}","local":{{"addr":"{la}","port":{lp}}},"remote":{{"addr":"{ra}","port":{rp}}},"bytes_sent":{sent},"bytes_received":{received},"packets_sent":3,"packets_received":3}}"#
        )
    }

    fn tuple(local: &str, remote: &str) -> Key {
        key(local.parse().expect("local"), remote.parse().expect("remote"))
    }

    #[test]
    fn matches_exact_wrong_and_missing_connections() {
        let capture = [
            line("127.0.0.1:40000", "127.0.0.2:5000", "outgoing", 100, 200),
            // The server side of the same connection does not count.
            line("127.0.0.2:5000", "127.0.0.1:40000", "incoming", 200, 100),
            line("::ffff:127.0.0.1:40001", "::ffff:127.0.0.2:5000", "outgoing", 100, 200),
            line("127.0.0.1:40002", "127.0.0.2:5000", "outgoing", 100, 0),
            line("127.0.0.1:40003", "127.0.0.2:5000", "outgoing", 100, 0),
            line("127.0.0.1:40004", "127.0.0.2:5000", "outgoing", 0, 0),
            "not json".to_string(),
            String::new(),
        ]
        .join("\n");
        let expected = vec![
            (tuple("127.0.0.1:40000", "127.0.0.2:5000"), 1),
            (tuple("127.0.0.1:40001", "127.0.0.2:5000"), 1),
            (tuple("127.0.0.1:40002", "127.0.0.2:5000"), 1),
            (tuple("127.0.0.1:40004", "127.0.0.2:5000"), 1),
            (tuple("127.0.0.1:40003", "127.0.0.2:5000"), 1),
            (tuple("127.0.0.1:40009", "127.0.0.2:5000"), 1),
        ];
        let m = match_capture(capture.as_bytes(), &expected).expect("match");
        assert_eq!((m.lines, m.tcp_outgoing, m.unparsable), (7, 5, 1));
        assert_eq!((m.exact, m.wrong), (2, 3));
        assert_eq!(m.wrong_kinds, vec![((100, 0), 2), ((0, 0), 1)]);
        assert!(m.first_record.as_deref().is_some_and(|l| l.contains("40000")));
    }

    #[test]
    fn a_reused_tuple_needs_a_record_per_connection() {
        let capture = line("127.0.0.1:40000", "127.0.0.2:5000", "outgoing", 100, 200);
        let expected = vec![(tuple("127.0.0.1:40000", "127.0.0.2:5000"), 2)];
        let m = match_capture(capture.as_bytes(), &expected).expect("match");
        assert_eq!((m.exact, m.wrong), (1, 0));
    }
}
