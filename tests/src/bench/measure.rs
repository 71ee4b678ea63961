//! Steps 1–4 of the benchmark: the loopback measurements, without the agent (baseline) and with
//! `eddy-agent run`, alternating over the rounds; the agent's CPU per measured window and its memory
//! after each agent round.
//!
//! A round opens and closes with a baseline, the agent variants between them (their order flips
//! every round), so that every agent window lies between two baseline windows of its round: the
//! report divides it by the baseline interpolated to its time, which takes out the machine's drift
//! over the round (on these VMs a baseline moves by up to 20 % within minutes, with no steal).
//!
//! Each measurement is one `eddy-loadgen conn-rate|throughput` process (its exchange servers live
//! until their process exits), its JSON summary kept in the work directory. A measurement during
//! which another `eddy-agent` ran is taken again (up to 20 times); so is one during which the
//! hypervisor stole more than [`STEAL_LIMIT`] of the machine's CPU time (up to [`STEAL_RETRIES`]
//! times, then kept and counted: the report prints the largest steal kept). Raw rows also go to
//! `results.tsv` (with the steal), `cpu.tsv` and `mem.tsv` in the work directory.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::procs::{self, CpuStat, Proc, RunningAgent, note, pid_list};
use super::{Bench, DRAIN, SETTLE};

/// A measured window whose CPU time was stolen by the hypervisor above this share is taken again:
/// on these VMs steal comes in bursts (up to 45 % of a second), and a window under it measures the
/// neighbours, not the agent.
pub const STEAL_LIMIT: f64 = 0.05;
/// How many times a window is taken again for steal before it is kept (and counted as such).
pub const STEAL_RETRIES: u32 = 3;

/// The three measurements, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Test {
    ConnRate,
    SmallWrite,
    LargeWrite,
}

impl Test {
    pub const ALL: [Test; 3] = [Test::ConnRate, Test::SmallWrite, Test::LargeWrite];

    /// Short name (file names, raw rows).
    pub fn key(self) -> &'static str {
        match self {
            Test::ConnRate => "conn-rate",
            Test::SmallWrite => "small-write",
            Test::LargeWrite => "large-write",
        }
    }

    /// Row label of the report.
    pub fn label(self) -> &'static str {
        match self {
            Test::ConnRate => "connection rate",
            Test::SmallWrite => "small-write (1 KiB)",
            Test::LargeWrite => "large-write (128 KiB)",
        }
    }

    /// The lowest acceptable agent/baseline ratio.
    pub fn target(self) -> f64 {
        match self {
            Test::ConnRate | Test::SmallWrite => 0.95,
            Test::LargeWrite => 0.99,
        }
    }

    /// Connections per second (conn-rate) rather than bytes per second.
    pub fn is_rate(self) -> bool {
        self == Test::ConnRate
    }

    fn loadgen_args(self, duration_secs: u64) -> Vec<String> {
        let d = format!("{duration_secs}s");
        let v: Vec<&str> = match self {
            Test::ConnRate => vec!["conn-rate", "--duration", &d],
            Test::SmallWrite => vec!["throughput", "--write-size", "1024", "--duration", &d],
            Test::LargeWrite => vec!["throughput", "--write-size", "131072", "--duration", &d],
        };
        v.into_iter().map(String::from).collect()
    }
}

/// Without or with the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Baseline,
    /// The agent with the run's hook set (`--disabled-hooks`, or the kernel's best).
    Agent,
    /// The agent with the n-th `--hook-set` (0-based).
    HookSet(u8),
}

impl Variant {
    pub fn name(self) -> String {
        match self {
            Variant::Baseline => "baseline".into(),
            Variant::Agent => "agent".into(),
            Variant::HookSet(i) => format!("agent-set{}", u16::from(i) + 1),
        }
    }
}

/// One measurement: connections or bytes per second, and the loadgen's error count.
#[derive(Clone, Debug)]
pub struct Sample {
    pub test: Test,
    pub variant: Variant,
    pub round: u32,
    pub value: f64,
    pub errors: u64,
    /// The share of the machine's CPU time stolen by the hypervisor during the window.
    pub steal: f64,
    /// The middle of the window, in seconds since the first measurement began.
    pub at: f64,
}

/// The agent's CPU ticks over one measured window (the load plus the drain).
#[derive(Clone, Debug)]
pub struct CpuWindow {
    pub test: Test,
    pub ticks: u64,
    pub seconds: f64,
}

/// `VmRSS` and `VmHWM` (KiB; 0 when unreadable) after an agent round.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// Everything steps 1–4 measured.
#[derive(Debug, Default)]
pub struct Results {
    pub samples: Vec<Sample>,
    pub cpu: Vec<CpuWindow>,
    pub memory: Vec<Memory>,
    /// The hook chosen per capability and the kernel, from the first agent's `/status`.
    pub hooks: Option<HookSet>,
    /// The same for each `--hook-set`, in order.
    pub set_hooks: Vec<Option<HookSet>>,
    /// Windows taken again because of steal above [`STEAL_LIMIT`].
    pub steal_retakes: u32,
    /// Windows kept with steal above [`STEAL_LIMIT`] (after [`STEAL_RETRIES`] retakes).
    pub steal_kept: u32,
    /// When the first measurement began (the origin of [`Sample::at`]).
    pub started: Option<Instant>,
}

/// What the agent under test runs on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HookSet {
    pub kernel: String,
    /// `(capability, chosen hook)`.
    pub chosen: Vec<(String, String)>,
}

impl HookSet {
    /// From the agent's `/status` (`kernel.release`, `hooks[].capability/chosen`).
    pub fn from_status(status: &serde_json::Value) -> HookSet {
        let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
        HookSet {
            kernel: s(&status["kernel"]["release"]),
            chosen: status["hooks"]
                .as_array()
                .map(|hs| hs.iter().map(|h| (s(&h["capability"]), s(&h["chosen"]))).collect())
                .unwrap_or_default(),
        }
    }
}

/// The fields of a loadgen summary that the benchmark reads.
#[derive(Deserialize)]
struct LoadSummary {
    #[serde(default)]
    per_second: f64,
    #[serde(default)]
    bytes_per_second: f64,
    errors: u64,
    server_errors: u64,
}

fn append_row(path: &Path, row: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{row}").with_context(|| format!("writing {}", path.display()))
}

impl Bench {
    /// All rounds: a baseline, the agent variants (in the opposite order every other round), a
    /// baseline.
    pub fn measure_rounds(&self) -> Result<Results> {
        let mut results = Results {
            set_hooks: vec![None; self.hook_sets.len()],
            started: Some(Instant::now()),
            ..Results::default()
        };
        let sets = (0..self.hook_sets.len()).map(|i| Variant::HookSet(u8::try_from(i).unwrap_or(u8::MAX)));
        let agents: Vec<Variant> = std::iter::once(Variant::Agent).chain(sets).collect();
        for round in 1..=self.rounds {
            let mut order = agents.clone();
            if round % 2 == 0 {
                order.reverse();
            }
            self.run_variant(Variant::Baseline, "baseline", round, &mut results)?;
            for variant in order {
                self.run_variant(variant, &variant.name(), round, &mut results)?;
            }
            self.run_variant(Variant::Baseline, "baseline-end", round, &mut results)?;
        }
        Ok(results)
    }

    /// One variant's three measurements; `tag` names its files and log lines.
    fn run_variant(&self, variant: Variant, tag: &str, round: u32, results: &mut Results) -> Result<()> {
        let agent = match variant {
            Variant::Agent | Variant::HookSet(_) => {
                let log = self.work.join(format!("{}-run-{round}.log", variant.name()));
                let args = match variant {
                    Variant::HookSet(i) => {
                        vec!["--disabled-hooks".to_string(), self.hook_sets[usize::from(i)].clone()]
                    }
                    _ => self.agent_args.clone(),
                };
                // Includes the settle time.
                let agent =
                    RunningAgent::start(&self.agent, &args, super::LISTEN, super::POLL, &log, SETTLE)?;
                let slot = match variant {
                    Variant::HookSet(i) => &mut results.set_hooks[usize::from(i)],
                    _ => &mut results.hooks,
                };
                if slot.is_none() {
                    let status = crate::http_get(super::LISTEN, "/status", Duration::from_secs(5))
                        .ok()
                        .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.text()).ok());
                    *slot = status.as_ref().map(HookSet::from_status);
                }
                Some(agent)
            }
            Variant::Baseline => {
                // The same idle time before the first measurement.
                thread::sleep(SETTLE);
                None
            }
        };
        for test in Test::ALL {
            self.measure(test, variant, tag, round, agent.as_ref(), results)?;
        }
        if let Some(agent) = agent {
            // CPU and memory are the run's hook set's (other sets give their ratios only).
            if variant == Variant::Agent {
                let pid = agent.pid();
                let rss = procs::status_kib(pid, "VmRSS");
                let hwm = procs::status_kib(pid, "VmHWM");
                let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
                append_row(&self.work.join("mem.tsv"), &format!("{round}\t{}\t{}", opt(rss), opt(hwm)))?;
                results.memory.push(Memory { rss_kib: rss.unwrap_or(0), hwm_kib: hwm.unwrap_or(0) });
            }
            agent.stop();
        }
        Ok(())
    }

    /// One loadgen run (again while another eddy-agent ran), then the drain; records the sample.
    fn measure(
        &self,
        test: Test,
        variant: Variant,
        tag: &str,
        round: u32,
        agent: Option<&RunningAgent>,
        results: &mut Results,
    ) -> Result<()> {
        let name = format!("{}-{tag}-{round}", test.key());
        let out = self.work.join(format!("{name}.json"));
        let err = self.work.join(format!("{name}.err"));
        let args = test.loadgen_args(self.duration_secs);
        let own: Vec<u32> = agent.map(RunningAgent::pid).into_iter().collect();
        let mut attempt = 1;
        let mut steal_retakes = 0;
        let (c0, t0, steal, at) = loop {
            procs::wait_quiet(&own)?;
            let c0 = match agent {
                Some(a) => Some(
                    procs::cpu_ticks(a.pid())
                        .with_context(|| format!("eddy-agent (pid {}) is gone", a.pid()))?,
                ),
                None => None,
            };
            let t0 = Instant::now();
            let s0 = CpuStat::read()?;
            let mut cmd = Command::new(&self.loadgen);
            cmd.args(&args).stdout(procs::output_file(&out)?).stderr(procs::output_file(&err)?);
            let mut lg = Proc::spawn(cmd)?;
            // Watch for other eddy-agents while it runs.
            let mut seen = Vec::new();
            while lg.running() {
                let others = procs::foreign_agents(&own);
                if !others.is_empty() {
                    seen = others;
                }
                thread::sleep(Duration::from_millis(200));
            }
            if !lg.wait()?.success() {
                bail!(
                    "eddy-loadgen {} failed: {}",
                    args.join(" "),
                    std::fs::read_to_string(&err).unwrap_or_default().trim_end()
                );
            }
            let steal = s0.steal_share(CpuStat::read()?);
            let started = *results.started.get_or_insert(t0);
            let at = (t0.duration_since(started) + t0.elapsed() / 2).as_secs_f64();
            if seen.is_empty() && steal > STEAL_LIMIT && steal_retakes < STEAL_RETRIES {
                steal_retakes += 1;
                results.steal_retakes += 1;
                note(&format!(
                    "  {:.1} % of the CPU time was stolen during {} {} (limit {:.0} %): measuring again",
                    100.0 * steal,
                    tag,
                    test.key(),
                    100.0 * STEAL_LIMIT
                ));
                continue;
            }
            if seen.is_empty() {
                if steal > STEAL_LIMIT {
                    results.steal_kept += 1;
                }
                break (c0, t0, steal, at);
            }
            if attempt >= 20 {
                bail!("another eddy-agent (pid {}) kept running during the measurements", pid_list(&seen));
            }
            note(&format!(
                "  another eddy-agent (pid {}) ran during {} {}: measuring again",
                pid_list(&seen),
                tag,
                test.key()
            ));
            attempt += 1;
        };
        thread::sleep(DRAIN);
        if let (Some(agent), Some(c0), Variant::Agent) = (agent, c0, variant) {
            let c1 = procs::cpu_ticks(agent.pid())
                .with_context(|| format!("eddy-agent (pid {}) died during {}", agent.pid(), test.key()))?;
            let seconds = t0.elapsed().as_secs_f64();
            let ticks = c1.saturating_sub(c0);
            append_row(&self.work.join("cpu.tsv"), &format!("{}\t{round}\t{ticks}\t{seconds}", test.key()))?;
            results.cpu.push(CpuWindow { test, ticks, seconds });
        }
        let text = std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
        let summary: LoadSummary = serde_json::from_str(text.trim())
            .with_context(|| format!("{}: not an eddy-loadgen summary: {}", out.display(), text.trim()))?;
        let value = if test.is_rate() { summary.per_second } else { summary.bytes_per_second };
        let errors = summary.errors + summary.server_errors;
        append_row(
            &self.work.join("results.tsv"),
            &format!("{}\t{tag}\t{round}\t{value}\t{errors}\t{steal:.4}\t{at:.1}", test.key()),
        )?;
        let shown = if test.is_rate() {
            format!("{value:.0} conn/s")
        } else {
            format!("{:.0} MiB/s", value / 1_048_576.0)
        };
        let errs = if errors == 0 { String::new() } else { format!(" (errors: {errors})") };
        note(&format!(
            "  round {round} {} {}: {shown}{errs} (steal {:.1} %)",
            tag,
            test.key(),
            100.0 * steal
        ));
        results.samples.push(Sample { test, variant, round, value, errors, steal, at });
        Ok(())
    }
}
