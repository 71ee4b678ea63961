//! What the soak measured, the criteria it is judged by, and the printed report.
//!
//! Criteria ([`Report::criteria`]):
//! - `connections`: every requested connection was held;
//! - `memory`: VmHWM below the cgroup limit, no OOM kill, the agent alive at the end;
//! - `plateau`: after the warm-up (a fifth of the run, at most 60 s, after the connections are
//!   open), the largest RSS of the second half is at most 10% + 8 MiB above that of the first half;
//! - `healthz`: every `/healthz` answered 200 in less than 1 s;
//! - `polls`: no scan of the collector was missed (every gap between scans below twice the poll
//!   interval, see [`super::probe::scan_gaps`]), liveness always `ok`, every `/status` answered;
//! - `bytes`: the known connection's records are exact, both ends, closed, in `/flows` and in the
//!   JSON lines (and in `/flows` under load when it is among the flows answered).

use std::fmt::Write as _;
use std::time::Duration;

use super::cgroup::{Usage, Version};
use super::dns_flood::FloodCounts;
use super::probe::{Observed, scan_gaps};

/// Counter names that count something lost, dropped, bounded or failed.
pub const DROP_WORDS: &[&str] = &[
    "drop", "evict", "overflow", "fold", "truncat", "lost", "full", "refused", "timeout", "error", "expired",
    "reject", "miss", "fail",
];

const MIB: f64 = 1_048_576.0;

/// One memory sample.
#[derive(Clone, Debug)]
pub struct Row {
    pub seconds: f64,
    pub rss: u64,
    pub hwm: u64,
    pub cgroup: u64,
    pub live_flows: u64,
    pub dns_queries: u64,
    pub api_requests: u64,
    pub healthz_max: Duration,
}

impl Row {
    pub const HEADER: &str = "    t(s)  VmRSS(MiB)  VmHWM(MiB)  cgroup(MiB)  live flows  DNS queries  API requests  healthz max(ms)";

    pub fn line(&self) -> String {
        format!(
            "{:>8.0}  {:>10.1}  {:>10.1}  {:>11.1}  {:>10}  {:>11}  {:>12}  {:>15.1}",
            self.seconds,
            self.rss as f64 / MIB,
            self.hwm as f64 / MIB,
            self.cgroup as f64 / MIB,
            self.live_flows,
            self.dns_queries,
            self.api_requests,
            self.healthz_max.as_secs_f64() * 1000.0
        )
    }
}

#[derive(Debug)]
pub struct Report {
    pub options: super::Options,
    pub limit: u64,
    pub cgroup_version: Version,
    pub held: usize,
    pub hold_errors: usize,
    pub workers: usize,
    pub setup: Duration,
    /// Seconds from the start when every connection was open.
    pub steady_from: f64,
    pub poll: Duration,
    pub rows: Vec<Row>,
    pub usage: Usage,
    pub observed: Observed,
    pub known_rounds: u64,
    pub known_live: Result<String, String>,
    pub known_closed: Result<String, String>,
    pub known_jsonl: Result<String, String>,
    /// `/status` and `/metrics` at the end of the load.
    pub status: serde_json::Value,
    pub metrics: String,
    pub flood: FloodCounts,
    /// Queries the DNS servers answered.
    pub answered: u64,
    pub alive_at_end: bool,
    pub exit: String,
    pub stdout_lines: u64,
    pub stdout_bytes: u64,
}

/// One judged criterion.
#[derive(Clone, Debug)]
pub struct Criterion {
    pub name: &'static str,
    pub pass: bool,
    pub detail: String,
}

fn is_drop_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    DROP_WORDS.iter().any(|w| n.contains(w))
}

fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, u64)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                walk(&name, v, out);
            }
        }
        serde_json::Value::Number(n)
            if is_drop_name(prefix.rsplit('.').next().unwrap_or(prefix)) || prefix.starts_with("drops.") =>
        {
            if let Some(n) = n.as_u64() {
                out.push((prefix.to_string(), n));
            }
        }
        _ => {}
    }
}

impl Report {
    pub fn max_rss(&self) -> u64 {
        self.rows.iter().map(|r| r.rss).max().unwrap_or(0)
    }

    pub fn max_hwm(&self) -> u64 {
        self.rows.iter().map(|r| r.hwm).max().unwrap_or(0)
    }

    /// Largest RSS of the first and the second half of the steady window.
    pub fn plateau(&self) -> (u64, u64) {
        let end = self.rows.last().map_or(0.0, |r| r.seconds);
        let warmup = ((end - self.steady_from) / 5.0).min(60.0);
        let from = self.steady_from + warmup;
        let mid = from + (end - from) / 2.0;
        let max = |lo: f64, hi: f64| {
            self.rows.iter().filter(|r| r.seconds >= lo && r.seconds <= hi).map(|r| r.rss).max().unwrap_or(0)
        };
        (max(from, mid), max(mid, end + 1.0))
    }

    /// Counters of `/status` whose name says something was dropped, evicted, folded, … (and every
    /// entry of `drops`).
    pub fn drop_counters(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        walk("", &self.status, &mut out);
        out
    }

    /// `/metrics` samples of such counters; a counter with more than 8 series (per DNS name, …)
    /// as one line with its series count and sum.
    pub fn metric_drop_lines(&self) -> Vec<String> {
        let mut by_name: Vec<(String, Vec<&str>)> = Vec::new();
        for l in self.metrics.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap_or("");
            if !is_drop_name(name) {
                continue;
            }
            match by_name.iter_mut().find(|(n, _)| n == name) {
                Some((_, lines)) => lines.push(l),
                None => by_name.push((name.to_string(), vec![l])),
            }
        }
        let mut out = Vec::new();
        for (name, lines) in by_name {
            if lines.len() <= 8 {
                out.extend(lines.iter().map(|l| l.to_string()));
            } else {
                let sum: f64 = lines.iter().filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum();
                out.push(format!("{name}: {} series, sum {sum}", lines.len()));
            }
        }
        out
    }

    pub fn max_scan_gap(&self) -> f64 {
        scan_gaps(&self.observed.status, 0.0).into_iter().fold(0.0, f64::max)
    }

    pub fn criteria(&self) -> Vec<Criterion> {
        let o = &self.observed;
        let c = |name, pass, detail: String| Criterion { name, pass, detail };
        let hwm = self.max_hwm();
        let (first, second) = self.plateau();
        let gap = self.max_scan_gap();
        let poll_age = o.status.iter().map(|s| s.2).fold(0.0, f64::max);
        let sample_gap = o.status.windows(2).map(|w| w[1].0 - w[0].0).fold(0.0, f64::max);
        let live_wrong = self.known_live.as_ref().err().filter(|e| e.contains("expected"));
        vec![
            c(
                "connections",
                self.held == self.options.connections,
                format!(
                    "{} of {} held ({} failed attempts, {} workers, opened in {:.1} s)",
                    self.held,
                    self.options.connections,
                    self.hold_errors,
                    self.workers,
                    self.setup.as_secs_f64()
                ),
            ),
            c(
                "memory",
                hwm < self.limit && self.usage.oom_kills == 0 && self.alive_at_end,
                format!(
                    "VmHWM {:.1} MiB < limit {:.0} MiB; cgroup peak {:.1} MiB, OOM kills {}, limit hits {}, alive {} (exit: {})",
                    hwm as f64 / MIB,
                    self.limit as f64 / MIB,
                    self.usage.peak as f64 / MIB,
                    self.usage.oom_kills,
                    self.usage.limit_hits,
                    self.alive_at_end,
                    self.exit
                ),
            ),
            c(
                "plateau",
                second as f64 <= first as f64 * 1.10 + 8.0 * MIB,
                format!(
                    "max RSS {:.1} MiB in the first half of the steady window, {:.1} MiB in the second",
                    first as f64 / MIB,
                    second as f64 / MIB
                ),
            ),
            c(
                "healthz",
                o.healthz_max < Duration::from_secs(1) && o.healthz_failures == 0 && o.healthz_count > 0,
                format!(
                    "{} answers, slowest {:.1} ms, {} not 200{}",
                    o.healthz_count,
                    o.healthz_max.as_secs_f64() * 1000.0,
                    o.healthz_failures,
                    o.healthz_last_failure.as_ref().map(|f| format!(" (last: {f})")).unwrap_or_default()
                ),
            ),
            c(
                "polls",
                gap < 2.0 * self.poll.as_secs_f64()
                    && o.liveness_not_ok == 0
                    && o.status_failures == 0
                    && !o.status.is_empty(),
                format!(
                    "{} /status samples (largest interval {sample_gap:.2} s, {} failed): largest gap between scans {gap:.2} s \
                 (poll interval {:.1} s, missed if >= {:.1} s), last completed poll at most {poll_age:.2} s old, liveness not ok {} times",
                    o.status.len(),
                    o.status_failures,
                    self.poll.as_secs_f64(),
                    2.0 * self.poll.as_secs_f64(),
                    o.liveness_not_ok
                ),
            ),
            c(
                "bytes",
                self.known_closed.is_ok() && self.known_jsonl.is_ok() && live_wrong.is_none(),
                format!(
                    "known connection, {} rounds: /flows after close: {}; JSON lines: {}; /flows under load: {}",
                    self.known_rounds,
                    show(&self.known_closed),
                    show(&self.known_jsonl),
                    show(&self.known_live)
                ),
            ),
        ]
    }

    pub fn passed(&self) -> bool {
        self.criteria().iter().all(|c| c.pass)
    }

    /// The printed report.
    pub fn render(&self) -> String {
        let o = &self.options;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nEddy soak: {} connections, DNS flood {}/s over {} servers, {} API hammer threads, {:.0} s; \
             memory limit {:.0} MiB (cgroup {:?}), poll interval {:.1} s, flow map {} entries",
            o.connections,
            o.dns_rate,
            o.dns_servers,
            o.hammer_threads,
            o.duration.as_secs_f64(),
            self.limit as f64 / MIB,
            self.cgroup_version,
            self.poll.as_secs_f64(),
            o.flow_map_entries()
        );
        let _ = writeln!(
            s,
            "\nRSS over time (connections open from {:.0} s):\n{}",
            self.steady_from,
            Row::HEADER
        );
        for r in &self.rows {
            let _ = writeln!(s, "{}", r.line());
        }
        let ob = &self.observed;
        let _ = writeln!(
            s,
            "\nmax VmRSS {:.1} MiB, VmHWM {:.1} MiB, cgroup peak {:.1} MiB of {:.0} MiB",
            self.max_rss() as f64 / MIB,
            self.max_hwm() as f64 / MIB,
            self.usage.peak as f64 / MIB,
            self.limit as f64 / MIB
        );
        let _ = writeln!(
            s,
            "API hammer: {} requests, {} errors, {:.1} MiB answered, slowest {:.2} s{}",
            ob.hammer_requests,
            ob.hammer_errors,
            ob.hammer_bytes as f64 / MIB,
            ob.hammer_max.as_secs_f64(),
            ob.hammer_last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "DNS flood: {} queries sent ({} send errors), {} answered by the servers, {} answers received",
            self.flood.queries, self.flood.send_errors, self.answered, self.flood.answers
        );
        let _ = writeln!(
            s,
            "agent JSON lines: {} lines, {:.1} MiB; exit after SIGTERM: {}",
            self.stdout_lines,
            self.stdout_bytes as f64 / MIB,
            self.exit
        );
        let _ = writeln!(s, "\ndrop counters (/status at the end of the load):");
        for chunk in self.drop_counters().chunks(4) {
            let line: Vec<String> = chunk.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(s, "  {}", line.join("  "));
        }
        let _ = writeln!(s, "drop counters (/metrics):");
        for l in self.metric_drop_lines() {
            let _ = writeln!(s, "  {l}");
        }
        let _ = writeln!(s);
        for c in self.criteria() {
            let _ = writeln!(s, "{} {}: {}", if c.pass { "PASS" } else { "FAIL" }, c.name, c.detail);
        }
        let _ = writeln!(s, "RESULT: {}", if self.passed() { "PASS" } else { "FAIL" });
        s
    }
}

fn show(r: &Result<String, String>) -> String {
    match r {
        Ok(s) => s.clone(),
        Err(e) => format!("NOT EXACT: {e}"),
    }
}

impl Report {
    /// The key numbers, the table rows and the criteria as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "connections": self.options.connections,
            "held": self.held,
            "duration_seconds": self.options.duration.as_secs_f64(),
            "limit_bytes": self.limit,
            "max_rss_bytes": self.max_rss(),
            "max_hwm_bytes": self.max_hwm(),
            "cgroup_peak_bytes": self.usage.peak,
            "healthz_max_ms": self.observed.healthz_max.as_secs_f64() * 1000.0,
            "max_scan_gap_seconds": self.max_scan_gap(),
            "rows": self.rows.iter().map(|r| serde_json::json!([
                r.seconds, r.rss, r.hwm, r.cgroup, r.live_flows, r.dns_queries, r.api_requests,
                r.healthz_max.as_secs_f64() * 1000.0
            ])).collect::<Vec<_>>(),
            "drops": self.drop_counters().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            "criteria": self.criteria().iter().map(|c| serde_json::json!({
                "name": c.name, "pass": c.pass, "detail": c.detail
            })).collect::<Vec<_>>(),
        })
    }
}
