//! The benchmark's report: the table of medians and ratios, the one-line summaries with their
//! targets, the churn's exact share, the agent's CPU and memory, the churn details and the verdict.
//!
//! Ratios are the median of the per-round agent/baseline ratios, each agent window divided by its
//! round's baseline interpolated to the window's time (between the baselines before and after it;
//! the one there is when a round has one); rounds without a positive baseline are left out. The
//! spread is their min–max; a measurement without any ratio misses its target. Numbers are
//! formatted as the shell script with its Python report did (`nan` for a missing value, thousands
//! separated by commas).

use std::fmt::Write as _;

use super::churn::{ChurnMatch, ChurnRun};
use super::measure::{Results, Sample, Test, Variant};

/// The baseline at time `at`, from a round's baseline samples: interpolated linearly between the
/// last one before and the first one after; the nearest when `at` is not between two; NaN without
/// any.
pub fn baseline_at(baselines: &[&Sample], at: f64) -> f64 {
    let before = baselines.iter().filter(|b| b.at <= at).max_by(|a, b| a.at.total_cmp(&b.at));
    let after = baselines.iter().filter(|b| b.at > at).min_by(|a, b| a.at.total_cmp(&b.at));
    match (before, after) {
        (Some(b), Some(a)) if a.at > b.at => b.value + (a.value - b.value) * (at - b.at) / (a.at - b.at),
        (Some(s), _) | (None, Some(s)) => s.value,
        (None, None) => f64::NAN,
    }
}

/// Median (mean of the two middle values for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `x` with `decimals` decimals, `nan`/`inf` as Python prints them.
pub fn fixed(x: f64, decimals: usize) -> String {
    if x.is_nan() {
        "nan".to_string()
    } else if x.is_infinite() {
        if x > 0.0 { "inf".to_string() } else { "-inf".to_string() }
    } else {
        format!("{x:.decimals$}")
    }
}

/// `x` rounded to an integer with thousands separated by commas (`12,345`).
pub fn grouped(x: f64) -> String {
    let s = fixed(x, 0);
    let (sign, digits) = match s.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", s.as_str()),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return s;
    }
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// A string as Python's `repr` writes it.
fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::from(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

fn format_value(test: Test, v: f64) -> String {
    if test.is_rate() {
        format!("{} conn/s", grouped(v))
    } else {
        format!("{} MiB/s", grouped(v / 1_048_576.0))
    }
}

/// One measurement's verdict.
struct Verdict {
    test: Test,
    row: [String; 8],
    summary: String,
    ok: bool,
    baseline: f64,
    agent: f64,
    ratio: f64,
    /// Min and max of the per-round ratios (NaN without any).
    spread: (f64, f64),
    errors: u64,
}

fn verdict(results: &Results, test: Test) -> Verdict {
    verdict_of(results, test, Variant::Agent)
}

/// The verdict of one agent variant (the run's hook set, or a `--hook-set`).
fn verdict_of(results: &Results, test: Test, variant: Variant) -> Verdict {
    let of = |variant: Variant| -> Vec<&Sample> {
        results.samples.iter().filter(|s| s.test == test && s.variant == variant).collect()
    };
    let (base, agent) = (of(Variant::Baseline), of(variant));
    let ratios: Vec<f64> = agent
        .iter()
        .filter_map(|a| {
            let round: Vec<&Sample> = base.iter().copied().filter(|b| b.round == a.round).collect();
            let b = baseline_at(&round, a.at);
            (b > 0.0).then(|| a.value / b)
        })
        .collect();
    let ratio = median(&ratios);
    let target = test.target();
    let ok = !ratios.is_empty() && ratio >= target;
    let (min, max) = if ratios.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        (
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        )
    };
    let spread =
        if ratios.is_empty() { "-".to_string() } else { format!("{}-{}", fixed(min, 3), fixed(max, 3)) };
    let errors: u64 = results.samples.iter().filter(|s| s.test == test).map(|s| s.errors).sum();
    let medians = |v: &[&Sample]| median(&v.iter().map(|s| s.value).collect::<Vec<_>>());
    let label = match variant {
        Variant::HookSet(i) => format!("{} [set {}]", test.label(), u16::from(i) + 1),
        _ => test.label().to_string(),
    };
    let label = label.as_str();
    Verdict {
        test,
        baseline: medians(&base),
        agent: medians(&agent),
        ratio,
        spread: (min, max),
        errors,
        row: [
            label.to_string(),
            format_value(test, medians(&base)),
            format_value(test, medians(&agent)),
            format!("{}x", fixed(ratio, 3)),
            spread,
            format!(">= {target:.2}x"),
            if ok { "ok" } else { "MISSED" }.to_string(),
            errors.to_string(),
        ],
        summary: format!(
            "{}: agent/baseline = {}x (target >= {target:.2}x){}",
            match variant {
                Variant::HookSet(i) => format!("{} [set {}]", test.key(), u16::from(i) + 1),
                _ => label.split(" (").next().unwrap_or(label).to_string(),
            },
            fixed(ratio, 2),
            if ok { "" } else { "  <-- MISSED" }
        ),
        ok,
    }
}

/// What the report shows besides the measurements.
pub struct Context<'a> {
    pub rounds: u32,
    pub duration_secs: u64,
    pub count: u64,
    pub clk_tck: u64,
    pub churn: &'a ChurnRun,
    pub matched: &'a ChurnMatch,
    /// Where a connection's time goes (step 5).
    pub cost: Option<&'a super::cost::ConnCost>,
    /// Memory under the steady load (step 6).
    pub steady: Option<&'a super::cost::SteadyMemory>,
    /// `capture`'s memory under that load (step 7).
    pub capture_memory: Option<&'a super::capture_mem::CaptureMemory>,
    /// The CPU everything ran on (`--one-cpu`).
    pub one_cpu: Option<usize>,
}

/// The report (stdout) and whether every target was met.
pub fn render(results: &Results, c: &Context<'_>) -> (String, bool) {
    let mut out = String::new();
    let sets: Vec<Variant> =
        (0..results.set_hooks.len()).map(|i| Variant::HookSet(u8::try_from(i).unwrap_or(u8::MAX))).collect();
    let verdicts: Vec<Verdict> = std::iter::once(Variant::Agent)
        .chain(sets.iter().copied())
        .flat_map(|v| Test::ALL.iter().map(move |t| (v, *t)))
        .map(|(v, t)| verdict_of(results, t, v))
        .collect();
    let m = c.matched;
    let churn_ok = m.exact == c.count;
    let steady_ok = c.steady.is_none_or(super::cost::SteadyMemory::ok);
    let capture_ok = c.capture_memory.is_none_or(super::capture_mem::CaptureMemory::ok);
    let passed = verdicts.iter().all(|v| v.ok) && churn_ok && steady_ok && capture_ok;

    let pct = |ticks: u64, secs: f64| {
        if secs > 0.0 { 100.0 * ticks as f64 / c.clk_tck as f64 / secs } else { f64::NAN }
    };
    let cpu_of = |test: Option<Test>| {
        let windows = results.cpu.iter().filter(|w| test.is_none_or(|t| w.test == t));
        let (ticks, secs) = windows.fold((0, 0.0), |(t, s), w| (t + w.ticks, s + w.seconds));
        fixed(pct(ticks, secs), 1)
    };
    let rss: Vec<f64> = results.memory.iter().map(|m| m.rss_kib as f64).collect();
    let rss_now = median(&rss) / 1024.0;
    let rss_hwm = results.memory.iter().map(|m| m.hwm_kib).max().map_or(f64::NAN, |h| h as f64 / 1024.0);

    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Eddy overhead benchmark: {} round(s) x {} s per measurement, loopback, agent = eddy-agent run --poll-interval {}",
        c.rounds,
        c.duration_secs,
        super::POLL
    );
    let _ = writeln!(
        out,
        "(medians; ratio = median over the rounds of agent / the round's baseline interpolated to the agent's \
         window, spread = their min-max)"
    );
    if let Some(cpu) = c.one_cpu {
        let _ = writeln!(out, "one CPU (--one-cpu): the load, the agent and capture all ran on CPU {cpu}");
    }
    if let Some(h) = &results.hooks {
        let set: Vec<String> = h.chosen.iter().map(|(c, hook)| format!("{c}={hook}")).collect();
        let _ = writeln!(out, "kernel {}; hook set: {}", h.kernel, set.join(", "));
    }
    for (i, h) in results.set_hooks.iter().enumerate() {
        let set: Vec<String> =
            h.iter().flat_map(|h| h.chosen.iter()).map(|(c, hook)| format!("{c}={hook}")).collect();
        let _ = writeln!(out, "set {}: {}", i + 1, set.join(", "));
    }
    let _ = writeln!(out);
    let header =
        ["measurement", "baseline", "agent", "ratio", "spread", "target", "", "errors"].map(String::from);
    let rows: Vec<&[String; 8]> = std::iter::once(&header).chain(verdicts.iter().map(|v| &v.row)).collect();
    let widths: Vec<usize> =
        (0..header.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for r in &rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    let _ = writeln!(out);
    for v in &verdicts {
        let _ = writeln!(out, "{}", v.summary);
    }
    let share = 100.0 * m.exact as f64 / c.count as f64;
    let _ = writeln!(
        out,
        "churn exact share: {}% ({}/{} connections with bytes_sent=100, bytes_received=200) (target 100%){}",
        fixed(share, 2),
        m.exact,
        c.count,
        if churn_ok { "" } else { "  <-- MISSED" }
    );
    let _ = writeln!(
        out,
        "agent CPU: {}% of one core over the measured windows (conn-rate {}%, small-write {}%, large-write {}%; \
         user-space only, eBPF time is charged to the traffic)",
        cpu_of(None),
        cpu_of(Some(Test::ConnRate)),
        cpu_of(Some(Test::SmallWrite)),
        cpu_of(Some(Test::LargeWrite))
    );
    let _ = writeln!(out, "{}", steal_line(results));
    let _ = writeln!(
        out,
        "agent RSS: {} MiB VmRSS after the measurements (median of rounds), {} MiB VmHWM peak",
        fixed(rss_now, 1),
        fixed(rss_hwm, 1)
    );
    if let Some(steady) = c.steady {
        super::cost::render_steady(&mut out, steady);
    }
    if let Some(m) = c.capture_memory {
        super::capture_mem::render(&mut out, m);
    }
    if let Some(cost) = c.cost {
        let _ = writeln!(out);
        super::cost::render_cost(&mut out, cost);
    }
    let _ = writeln!(out);
    render_churn(&mut out, c);
    let _ = writeln!(out);
    let _ =
        writeln!(out, "{}", if passed { "RESULT: all targets met" } else { "RESULT: some targets MISSED" });
    (out, passed)
}

/// The largest share of CPU time stolen by the hypervisor in a kept window.
fn max_steal(results: &Results) -> f64 {
    results.samples.iter().map(|s| s.steal).fold(0.0, f64::max)
}

/// How much the hypervisor took from the measured windows.
fn steal_line(results: &Results) -> String {
    let limit = 100.0 * super::measure::STEAL_LIMIT;
    let kept = if results.steal_kept == 0 {
        String::new()
    } else {
        format!(
            "; {} window(s) kept above it after {} retakes each  <-- noisy",
            results.steal_kept,
            super::measure::STEAL_RETRIES
        )
    };
    format!(
        "CPU steal: at most {}% in a kept window (limit {limit:.0}%: {} window(s) measured again){kept}",
        fixed(100.0 * max_steal(results), 1),
        results.steal_retakes
    )
}

/// The results for machines (`--json`): NaN becomes `null`.
pub fn json(results: &Results, c: &Context<'_>, disabled_hooks: Option<&str>) -> serde_json::Value {
    let num = |x: f64| if x.is_finite() { serde_json::json!(x) } else { serde_json::Value::Null };
    let (_, passed) = render(results, c);
    let measurements: Vec<serde_json::Value> = Test::ALL
        .iter()
        .map(|t| {
            let v = verdict(results, *t);
            serde_json::json!({
                "measurement": v.test.key(),
                "baseline": num(v.baseline),
                "agent": num(v.agent),
                "unit": if v.test.is_rate() { "connections/s" } else { "bytes/s" },
                "ratio": num(v.ratio),
                "spread": [num(v.spread.0), num(v.spread.1)],
                "target": v.test.target(),
                "met": v.ok,
                "errors": v.errors,
            })
        })
        .collect();
    let cpu = |test: Option<Test>| {
        let windows = results.cpu.iter().filter(|w| test.is_none_or(|t| w.test == t));
        let (ticks, secs) = windows.fold((0, 0.0), |(t, s), w| (t + w.ticks, s + w.seconds));
        num(if secs > 0.0 { 100.0 * ticks as f64 / c.clk_tck as f64 / secs } else { f64::NAN })
    };
    let rss: Vec<f64> = results.memory.iter().map(|m| m.rss_kib as f64 / 1024.0).collect();
    let hwm = results.memory.iter().map(|m| m.hwm_kib).max().map_or(f64::NAN, |h| h as f64 / 1024.0);
    serde_json::json!({
        "kernel": results.hooks.as_ref().map(|h| h.kernel.clone()),
        "hooks": results.hooks.as_ref().map(|h| h.chosen.iter().cloned().collect::<std::collections::BTreeMap<_, _>>()),
        "disabled_hooks": disabled_hooks,
        "rounds": c.rounds,
        "seconds_per_measurement": c.duration_secs,
        "one_cpu": c.one_cpu,
        "steal": {
            "limit": super::measure::STEAL_LIMIT,
            "max_kept": max_steal(results),
            "windows_measured_again": results.steal_retakes,
            "windows_kept_above_limit": results.steal_kept,
        },
        "measurements": measurements,
        "hook_sets": results.set_hooks.iter().enumerate().map(|(i, h)| {
            let v = Variant::HookSet(u8::try_from(i).unwrap_or(u8::MAX));
            let rows: Vec<serde_json::Value> = Test::ALL.iter().map(|t| {
                let d = verdict_of(results, *t, v);
                serde_json::json!({"measurement": t.key(), "ratio": num(d.ratio), "spread": [num(d.spread.0), num(d.spread.1)], "target": t.target(), "met": d.ok})
            }).collect();
            serde_json::json!({
                "set": i + 1,
                "hooks": h.as_ref().map(|h| h.chosen.iter().cloned().collect::<std::collections::BTreeMap<_, _>>()),
                "measurements": rows,
            })
        }).collect::<Vec<_>>(),
        "churn": {"count": c.count, "exact": c.matched.exact, "share": num(c.matched.exact as f64 / c.count as f64), "target": 1.0},
        "agent_cpu_percent": {"all": cpu(None), "conn_rate": cpu(Some(Test::ConnRate)), "small_write": cpu(Some(Test::SmallWrite)), "large_write": cpu(Some(Test::LargeWrite))},
        "agent_rss_mib": {"median": num(median(&rss)), "peak": num(hwm)},
        "steady_memory": c.steady.map(|s| serde_json::json!({"result": s, "target_peak_mib": super::cost::RSS_TARGET_MIB, "met": s.ok()})),
        "capture_memory": c.capture_memory.map(|m| serde_json::json!({"result": m, "target_peak_mib": super::cost::RSS_TARGET_MIB, "met": m.ok()})),
        "connection_cost_ns": c.cost,
        "passed": passed,
    })
}

fn render_churn(out: &mut String, c: &Context<'_>) {
    let (s, m, run) = (&c.churn.summary, c.matched, c.churn);
    let _ = writeln!(
        out,
        "churn details: loadgen {}/{} connections in {:?} s ({}/s), loadgen errors {}+{}, repeated 4-tuples {}; \
         done {:.1} s into a {} s capture",
        s.connections,
        s.requested,
        s.seconds,
        grouped(s.per_second),
        s.errors,
        s.server_errors,
        s.repeated_tuples,
        run.elapsed,
        run.capture_secs
    );
    let _ = writeln!(
        out,
        "  capture: {} records ({} tcp outgoing, {} unparsable), exit status {}, CPU during churn {:.2} s, VmHWM {:.1} MiB",
        m.lines,
        m.tcp_outgoing,
        m.unparsable,
        run.capture_status,
        run.capture_ticks as f64 / c.clk_tck as f64,
        run.capture_hwm_kib as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "  of {}: exact {}, wrong byte counts {}, no record {}",
        c.count,
        m.exact,
        m.wrong,
        c.count.saturating_sub(m.exact + m.wrong)
    );
    if !m.wrong_kinds.is_empty() {
        let mut kinds = m.wrong_kinds.clone();
        // Most common first; ties in order of first occurrence (a stable sort).
        kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
        let shown: Vec<String> =
            kinds.iter().take(5).map(|((sent, received), n)| format!("({sent}, {received}) x{n}")).collect();
        let _ = writeln!(out, "  wrong (bytes_sent, bytes_received), most common: {}", shown.join(", "));
    }
    if m.exact == 0
        && let Some(first) = &m.first_record
    {
        let cut: String = first.chars().take(300).collect();
        let _ = writeln!(out, "  no match at all; first capture line for reference: {cut}");
    }
    if s.errors > 0 || s.server_errors > 0 || s.truncated {
        let samples: Vec<String> = s.error_samples.iter().map(|e| py_repr(e)).collect();
        let _ = writeln!(
            out,
            "  note: loadgen did not complete every connection: [{}]{}",
            samples.join(", "),
            if s.truncated { " (truncated by --max-duration)" } else { "" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::churn::ChurnSummary;
    use super::super::measure::{CpuWindow, Memory, Sample};
    use super::*;

    fn sample(test: Test, variant: Variant, round: u32, value: f64) -> Sample {
        let at = f64::from(round) * 100.0 + if variant == Variant::Baseline { 0.0 } else { 50.0 };
        Sample { test, variant, round, value, errors: 0, steal: 0.0, at }
    }

    #[test]
    fn baselines_are_interpolated_to_the_agent_window() {
        let b = |value: f64, at: f64| Sample {
            test: Test::ConnRate,
            variant: Variant::Baseline,
            round: 1,
            value,
            errors: 0,
            steal: 0.0,
            at,
        };
        let (open, close) = (b(100.0, 0.0), b(80.0, 10.0));
        assert_eq!(baseline_at(&[&open, &close], 5.0), 90.0);
        assert_eq!(baseline_at(&[&close, &open], 2.5), 95.0);
        // Outside the two, or with one: the nearest.
        assert_eq!(baseline_at(&[&open, &close], 12.0), 80.0);
        assert_eq!(baseline_at(&[&close], 1.0), 80.0);
        assert!(baseline_at(&[], 1.0).is_nan());

        // A machine that slows down over the round: the agent costs nothing, its windows are
        // measured at 20 % and 80 % of the round, and both ratios come out as 1.
        let mut results = Results::default();
        for (round, open, close) in [(1, 100.0, 80.0), (2, 80.0, 60.0)] {
            let base = |value: f64, at: f64| Sample { round, ..b(value, at) };
            results.samples.push(base(open, 0.0));
            results.samples.push(base(close, 10.0));
            let at = if round == 1 { 2.0 } else { 8.0 };
            let value = open + (close - open) * at / 10.0;
            results.samples.push(Sample { variant: Variant::Agent, value, at, ..base(0.0, 0.0) });
        }
        let v = verdict_of(&results, Test::ConnRate, Variant::Agent);
        assert!((v.ratio - 1.0).abs() < 1e-12, "{}", v.ratio);
        assert_eq!(v.spread, (1.0, 1.0));
    }

    #[test]
    fn report_shape() {
        let mut results = Results::default();
        for (round, agent) in [(1, 0.9), (2, 1.0), (3, 0.96)] {
            for test in Test::ALL {
                let base = if test.is_rate() { 20_000.0 } else { 1_000.0 * 1_048_576.0 };
                results.samples.push(sample(test, Variant::Baseline, round, base));
                results.samples.push(sample(test, Variant::Agent, round, base * agent));
                results.cpu.push(CpuWindow { test, ticks: 10, seconds: 10.0 });
            }
            results.memory.push(Memory { rss_kib: 40 * 1024, hwm_kib: 50 * 1024 });
        }
        let churn = ChurnRun {
            summary: ChurnSummary {
                connections: 10,
                requested: 10,
                seconds: 1.0,
                per_second: 10.0,
                errors: 0,
                server_errors: 0,
                repeated_tuples: 0,
                truncated: false,
                error_samples: Vec::new(),
            },
            elapsed: 1.5,
            capture_secs: 20,
            capture_ticks: 50,
            capture_hwm_kib: 2048,
            capture_status: 0,
        };
        let matched = ChurnMatch { lines: 20, tcp_outgoing: 10, exact: 10, ..ChurnMatch::default() };
        let c = Context {
            cost: None,
            steady: None,
            capture_memory: None,
            one_cpu: None,
            rounds: 3,
            duration_secs: 2,
            count: 10,
            clk_tck: 100,
            churn: &churn,
            matched: &matched,
        };
        let (text, passed) = render(&results, &c);
        assert!(!passed, "0.96x misses the large-write target:\n{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[4],
            "measurement            baseline       agent          ratio   spread       target            errors"
        );
        assert_eq!(
            lines[5],
            "connection rate        20,000 conn/s  19,200 conn/s  0.960x  0.900-1.000  >= 0.95x  ok      0"
        );
        assert_eq!(
            lines[7],
            "large-write (128 KiB)  1,000 MiB/s    960 MiB/s      0.960x  0.900-1.000  >= 0.99x  MISSED  0"
        );
        assert_eq!(lines[11], "large-write: agent/baseline = 0.96x (target >= 0.99x)  <-- MISSED");
        assert!(text.contains("churn exact share: 100.00% (10/10 connections"), "{text}");
        assert!(
            text.contains("agent CPU: 1.0% of one core over the measured windows (conn-rate 1.0%"),
            "{text}"
        );
        assert!(
            text.contains("agent RSS: 40.0 MiB VmRSS after the measurements (median of rounds), 50.0 MiB"),
            "{text}"
        );
        assert!(text.contains("loadgen 10/10 connections in 1.0 s (10/s)"), "{text}");
        assert!(text.ends_with("\nRESULT: some targets MISSED\n"), "{text}");

        // The same results for machines, with the hook set the agent reported.
        results.hooks = Some(super::super::measure::HookSet {
            kernel: "6.18.44".into(),
            chosen: vec![("tcp_bytes".into(), "tcp_sock counters (live via iter/task_file)".into())],
        });
        let (text, _) = render(&results, &c);
        assert_eq!(
            text.lines().nth(3),
            Some("kernel 6.18.44; hook set: tcp_bytes=tcp_sock counters (live via iter/task_file)")
        );
        let j = json(&results, &c, Some("x"));
        assert_eq!(j["kernel"], "6.18.44");
        assert_eq!(j["hooks"]["tcp_bytes"], "tcp_sock counters (live via iter/task_file)");
        assert_eq!(j["disabled_hooks"], "x");
        let large = &j["measurements"][2];
        assert_eq!(
            (large["measurement"].as_str(), large["ratio"].as_f64(), large["met"].as_bool()),
            (Some("large-write"), Some(0.96), Some(false))
        );
        assert_eq!(large["spread"], serde_json::json!([0.9, 1.0]));
        assert_eq!((j["churn"]["exact"].as_u64(), j["passed"].as_bool()), (Some(10), Some(false)));
        assert_eq!(j["agent_rss_mib"]["peak"].as_f64(), Some(50.0));
        assert_eq!(j["one_cpu"], serde_json::Value::Null);
        assert_eq!(j["steal"]["windows_measured_again"], 0);

        // Everything on one CPU, and a window kept with steal above the limit after its retakes.
        results.samples[0].steal = 0.08;
        results.steal_retakes = 3;
        results.steal_kept = 1;
        let c = Context { one_cpu: Some(1), ..c };
        let (text, _) = render(&results, &c);
        assert_eq!(
            text.lines().nth(3),
            Some("one CPU (--one-cpu): the load, the agent and capture all ran on CPU 1")
        );
        assert!(
            text.contains(
                "CPU steal: at most 8.0% in a kept window (limit 5%: 3 window(s) measured again); 1 window(s) \
                 kept above it after 3 retakes each  <-- noisy"
            ),
            "{text}"
        );
        let j = json(&results, &c, None);
        assert_eq!((j["one_cpu"].as_u64(), j["steal"]["max_kept"].as_f64()), (Some(1), Some(0.08)));
    }

    #[test]
    fn medians() {
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn numbers_as_python_prints_them() {
        assert_eq!(grouped(0.4), "0");
        assert_eq!(grouped(999.0), "999");
        assert_eq!(grouped(1234.6), "1,235");
        assert_eq!(grouped(12_345_678.0), "12,345,678");
        assert_eq!(grouped(-1234.0), "-1,234");
        assert_eq!(grouped(f64::NAN), "nan");
        assert_eq!(fixed(f64::NAN, 3), "nan");
        assert_eq!(fixed(0.98765, 3), "0.988");
        assert_eq!(py_repr("connect: refused"), "'connect: refused'");
        assert_eq!(py_repr("it's"), "\"it's\"");
    }
}
