//! The host role: `report --out DIR --series 5.10,6.1,6.12,5.10-cgroup-v1` reads what
//! `scripts/kernel-matrix.sh` left per boot (`DIR/<run>/results.jsonl` from the guest's second serial
//! port, `meta.json` from the script; a run is a kernel series, with `-cgroup-v1` for its boot as a
//! cgroup v1-only host), prints one line per scenario and the hook chosen per capability, a markdown
//! table of all boots, writes `DIR/matrix.json`, and says whether every scenario passed everywhere.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::scenario::{Hook, clip, parse_hooks};
use crate::{SCENARIOS, flag};

/// Capabilities in table order; others that `/status` lists are appended.
const CAPABILITIES: &[&str] =
    &["tcp_lifecycle", "tcp_retransmits", "tcp_live_counters", "tcp_bytes", "udp", "dns"];

/// Scenarios whose SKIP does not fail the matrix (none: every scenario can run on every kernel of it).
const LEGITIMATE_SKIPS: &[&str] = &[];

/// Suffix of a run id whose boot is a cgroup v1-only host.
const V1_SUFFIX: &str = "-cgroup-v1";

/// Everything known about one boot.
struct KernelRun {
    /// The run id (`5.10`, `5.10-cgroup-v1`): the directory under DIR.
    run: String,
    series: String,
    /// `v2` or `v1`: how the boot's /init mounted cgroups.
    cgroup: &'static str,
    meta: Value,
    kernel: Option<String>,
    hooks: Vec<Hook>,
    status_end: Value,
    /// The first agent's line (start-up time)...
    agent: Value,
    /// ...and every agent's (one per phase of the boot).
    agents: Vec<Value>,
    /// The guest's `boot` line (`/proc/version`, CPUs).
    boot: Value,
    done: Value,
    /// In [`SCENARIOS`] order: (name, result, detail, seconds, data).
    scenarios: Vec<(String, String, String, f64, Value)>,
}

impl KernelRun {
    fn load(dir: &Path, run: &str) -> KernelRun {
        let d = dir.join(run);
        let (series, cgroup) = match run.strip_suffix(V1_SUFFIX) {
            Some(s) => (s, "v1"),
            None => (run, "v2"),
        };
        let meta: Value = std::fs::read_to_string(d.join("meta.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| json!({"exit": "not run (no meta.json)"}));
        let text = std::fs::read(d.join("results.jsonl")).unwrap_or_default();
        let lines: Vec<Value> = String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|l| {
                serde_json::from_str(l.trim_matches(|c: char| c.is_whitespace() || c == '\0')).ok()
            })
            .collect();
        let of = |kind: &'static str| lines.iter().filter(move |v| v["type"] == kind);
        let status_start = of("status").find(|v| v["phase"] == "start").map(|v| v["status"].clone());
        let status_end = of("status").find(|v| v["phase"] == "end").map(|v| v["status"].clone());
        let exit = meta["exit"].as_str().unwrap_or("unknown").to_string();
        let scenarios = SCENARIOS
            .iter()
            .filter(|s| s.runs_in(cgroup))
            .map(|s| match of("scenario").find(|v| v["scenario"] == s.name) {
                Some(v) => (
                    s.name.to_string(),
                    v["result"].as_str().unwrap_or("fail").to_string(),
                    v["detail"].as_str().unwrap_or_default().to_string(),
                    v["seconds"].as_f64().unwrap_or(0.0),
                    v["data"].clone(),
                ),
                None => (
                    s.name.to_string(),
                    "fail".to_string(),
                    format!("no result from the guest (run: {exit})"),
                    0.0,
                    Value::Null,
                ),
            })
            .collect();
        KernelRun {
            run: run.to_string(),
            series: series.to_string(),
            cgroup,
            kernel: lines.iter().find_map(|v| v["kernel"].as_str().map(String::from)),
            hooks: status_start.as_ref().map(parse_hooks).unwrap_or_default(),
            status_end: status_end.or(status_start).unwrap_or(Value::Null),
            agent: of("agent").next().cloned().unwrap_or(Value::Null),
            agents: of("agent").cloned().collect(),
            boot: of("boot").next().cloned().unwrap_or(Value::Null),
            done: of("done").next().cloned().unwrap_or(Value::Null),
            meta,
            scenarios,
        }
    }

    fn accepted(&self, name: &str, result: &str) -> bool {
        result == "pass" || (result == "skip" && LEGITIMATE_SKIPS.contains(&name))
    }

    fn passed(&self) -> usize {
        self.scenarios.iter().filter(|(n, r, ..)| r == "pass" && self.accepted(n, r)).count()
    }

    fn ok(&self) -> bool {
        self.meta["exit"] == "ok" && self.scenarios.iter().all(|(n, r, ..)| self.accepted(n, r))
    }

    /// `5.10.251-5 (5.10.0-43-cloud-amd64)`: the package version and the running release, and
    /// `, cgroup v1` for a cgroup v1-only boot.
    fn title(&self) -> String {
        let version = self.meta["package_version"].as_str().unwrap_or(&self.series);
        let release = self.kernel.clone().or_else(|| self.meta["release"].as_str().map(String::from));
        let title = match release {
            Some(r) => format!("{version} ({r})"),
            None => version.to_string(),
        };
        format!("{title}{}", self.boot_note())
    }

    /// Nothing, or `, cgroup v1 only` for a cgroup v1-only boot.
    fn boot_note(&self) -> &'static str {
        if self.cgroup == "v1" { ", cgroup v1 only" } else { "" }
    }

    /// `5.10` or `5.10 (cgroup v1)`.
    fn name(&self) -> String {
        if self.cgroup == "v1" { format!("{} (cgroup v1)", self.series) } else { self.series.clone() }
    }

    /// Non-zero drop counters at the end of the run.
    fn drops(&self) -> BTreeMap<String, u64> {
        self.status_end["drops"]
            .as_object()
            .map(|d| {
                d.iter().filter_map(|(k, v)| v.as_u64().filter(|n| *n > 0).map(|n| (k.clone(), n))).collect()
            })
            .unwrap_or_default()
    }
}

/// A table cell: the chosen hook, or `none: <first reason>`.
fn cell(hook: Option<&Hook>) -> String {
    let text = match hook {
        None => "–".to_string(),
        Some(h) => match &h.chosen {
            Some(c) => c.clone(),
            None => {
                let first = h.refused().into_iter().next().map_or_else(|| "no candidate".into(), |(_, r)| r);
                format!("none: {}", clip(&first, 90))
            }
        },
    };
    text.replace('|', "\\|")
}

/// `report ...`: returns whether every scenario passed on every kernel.
pub fn main(args: &[String]) -> Result<bool> {
    let out = Path::new(flag(args, "--out").context("--out DIR is required")?);
    let series: Vec<&str> = flag(args, "--series").unwrap_or("5.10,6.1,6.12").split(',').collect();
    let total: Option<f64> = flag(args, "--total-seconds").and_then(|s| s.parse().ok());
    let runs: Vec<KernelRun> = series.iter().map(|s| KernelRun::load(out, s)).collect();

    for run in &runs {
        println!();
        println!(
            "== kernel {} — {} — {}, {} s wall, guest driver {} s, agent ready after {} s, run: {}",
            run.name(),
            run.title(),
            run.meta["accel"].as_str().unwrap_or("?"),
            run.meta["wall_seconds"],
            run.done["seconds"].as_f64().map_or("?".into(), |s| format!("{s:.0}")),
            run.agent["startup_seconds"].as_f64().map_or("?".into(), |s| format!("{s:.1}")),
            run.meta["exit"].as_str().unwrap_or("?"),
        );
        if let Some(collector) = run.status_end["collector"].as_str() {
            println!("   collector: {collector}");
        }
        for agent in &run.agents {
            let phase = agent["phase"].as_str().unwrap_or("agent");
            if let Some(args) = agent["args"].as_array() {
                let args: Vec<&str> = args.iter().filter_map(Value::as_str).collect();
                println!("   {phase} agent: eddy-agent run {}", args.join(" "));
            }
            if agent["ready"] == false {
                println!("   {phase} agent: {}", clip(agent["detail"].as_str().unwrap_or_default(), 1500));
            }
        }
        for h in &run.hooks {
            println!("   hook {:<18} {}", h.capability, h.chosen.as_deref().unwrap_or("none"));
            // Why each better candidate was not used (the full text is in matrix.json).
            for (hook, why) in h.refused() {
                println!("        refused {hook}: {}", clip(&why, 160));
            }
        }
        for (name, result, detail, secs, _) in &run.scenarios {
            let tag = match (result.as_str(), run.accepted(name, result)) {
                ("pass", _) => "PASS",
                ("skip", true) => "SKIP",
                ("skip", false) => "SKIP (not accepted)",
                _ => "FAIL",
            };
            println!("   {tag:<5} {name:<16} {secs:>5.1}s  {detail}");
        }
        let drops = run.drops();
        if !drops.is_empty() {
            println!("   drops (non-zero): {drops:?}");
        }
        println!("   files: {}/{{console.log,results.jsonl}}", out.join(&run.run).display());
    }

    let mut caps: Vec<String> = CAPABILITIES.iter().map(|s| s.to_string()).collect();
    for run in &runs {
        for h in &run.hooks {
            if !caps.contains(&h.capability) {
                caps.push(h.capability.clone());
            }
        }
    }
    println!();
    println!("| kernel | {} | scenarios |", caps.join(" | "));
    println!("|---|{}---|", "---|".repeat(caps.len()));
    for run in &runs {
        let cells: Vec<String> =
            caps.iter().map(|c| cell(run.hooks.iter().find(|h| &h.capability == c))).collect();
        println!(
            "| {} | {} | {}/{} exact |",
            run.title(),
            cells.join(" | "),
            run.passed(),
            run.scenarios.len()
        );
    }

    let all_ok = runs.iter().all(KernelRun::ok);
    let doc = json!({
        "all_passed": all_ok,
        "total_seconds": total,
        "kernels": runs.iter().map(|r| json!({
            "run": r.run,
            "series": r.series,
            "cgroup": r.cgroup,
            "title": r.title(),
            "uname": r.kernel,
            "proc_version": r.boot["proc_version"],
            "run": r.meta,
            "agent": r.agent,
            "agents": r.agents,
            "driver": r.done,
            "hooks": r.status_end["hooks"],
            "drops": r.status_end["drops"],
            "passed": r.passed(),
            "total": r.scenarios.len(),
            "scenarios": r.scenarios.iter().map(|(n, res, d, s, data)| json!({
                "scenario": n, "result": res, "detail": d, "seconds": s, "data": data,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    let path = out.join("matrix.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("write {}", path.display()))?;
    println!();
    println!(
        "{}: {} (details: {})",
        if all_ok { "MATRIX PASSED" } else { "MATRIX FAILED" },
        runs.iter()
            .map(|r| format!("{} {}/{}", r.name(), r.passed(), r.scenarios.len()))
            .collect::<Vec<_>>()
            .join(", "),
        path.display()
    );
    Ok(all_ok)
}
