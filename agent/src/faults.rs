//! Fault injection for the integration tests of the panic policy ([`crate::panic_hook`]):
//! `EDDY_TEST_PANIC=collector` (the collector thread panics at its first scan
//! [`PANIC_DELAY`] after its first one) or `EDDY_TEST_PANIC=task` (a tokio task panics
//! [`PANIC_DELAY`] after the API starts serving); `EDDY_TEST_WITHHOLD_CAPS=CAP_X,CAP_Y` (the
//! run-time capability drop, [`crate::privileges`], gives these up too although the agent uses
//! them: the tests show with it what each kept capability is for).
//!
//! Honoured only together with the explicit switch `EDDY_TEST_FAULTS=1`, and announced with
//! a WARN line at start; without the switch both variables are ignored. Nothing else can
//! trigger a fault (no API, no file). A stalled collector needs no hook: the tests stop the
//! real thread from outside (ptrace).
//!
//! Limits: read once per process, from the process environment (not the config file or flags).

use std::sync::OnceLock;

/// The switch that enables everything else here.
pub const SWITCH: &str = "EDDY_TEST_FAULTS";
/// Where to panic: `collector` or `task`.
pub const PANIC: &str = "EDDY_TEST_PANIC";
/// Capabilities (kernel names, comma-separated) the run-time drop gives up as well.
pub const WITHHOLD_CAPS: &str = "EDDY_TEST_WITHHOLD_CAPS";
/// `EDDY_*` variables that are not configuration keys (the config loader skips them).
pub const ENV_VARS: [&str; 3] = [SWITCH, PANIC, WITHHOLD_CAPS];

/// Where an injected panic happens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PanicSite {
    #[default]
    None,
    Collector,
    Task,
}

/// The faults of this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    pub panic: PanicSite,
    /// Capabilities (a bit per number) the run-time drop gives up although the agent uses them.
    pub withhold_caps: u64,
    /// `EDDY_TEST_PANIC` was set without the switch, or with an unknown value.
    pub ignored: bool,
    /// `EDDY_TEST_WITHHOLD_CAPS` was set without the switch, or names an unknown capability.
    pub ignored_caps: bool,
}

impl Faults {
    /// From environment pairs.
    pub fn parse<'a>(mut var: impl FnMut(&str) -> Option<&'a str>) -> Faults {
        let on = var(SWITCH).is_some_and(|v| v.trim() == "1");
        let mut f = match (on, var(PANIC).map(str::trim)) {
            (_, None) => Faults::default(),
            (true, Some("collector")) => Faults { panic: PanicSite::Collector, ..Faults::default() },
            (true, Some("task")) => Faults { panic: PanicSite::Task, ..Faults::default() },
            (_, Some(_)) => Faults { ignored: true, ..Faults::default() },
        };
        if let Some(list) = var(WITHHOLD_CAPS) {
            match crate::privileges::mask_of(list) {
                Some(mask) if on => f.withhold_caps = mask,
                _ => f.ignored_caps = true,
            }
        }
        f
    }
}

/// This process's faults (read from the environment on first use).
pub fn get() -> Faults {
    static FAULTS: OnceLock<Faults> = OnceLock::new();
    *FAULTS.get_or_init(|| {
        let vars: Vec<(String, String)> =
            ENV_VARS.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v))).collect();
        Faults::parse(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()))
    })
}

/// Logs active (WARN) or ignored fault settings; call once after logging is set up.
pub fn announce() {
    let f = get();
    if f.panic != PanicSite::None {
        tracing::warn!(site = ?f.panic, "{SWITCH}=1: test fault injection is ON; this process will panic on purpose");
    }
    if f.withhold_caps != 0 {
        tracing::warn!(
            mask = format_args!("{:#x}", f.withhold_caps),
            "{SWITCH}=1: test fault injection is ON; capabilities the agent uses are withheld ({WITHHOLD_CAPS})"
        );
    }
    if f.ignored {
        tracing::warn!("{PANIC} is set but ignored (needs {SWITCH}=1 and `collector` or `task`)");
    }
    if f.ignored_caps {
        tracing::warn!("{WITHHOLD_CAPS} is set but ignored (needs {SWITCH}=1 and known capability names)");
    }
}

/// An injected panic happens this long after the first chance (so the agent is ready first).
pub const PANIC_DELAY: std::time::Duration = std::time::Duration::from_secs(2);

/// Panics if the fault at `site` is on and [`PANIC_DELAY`] has passed since the first call
/// (`what` says where, for the message; the panic's location is the caller's).
#[track_caller]
pub fn maybe_panic(site: PanicSite, what: &str) {
    static ARMED: OnceLock<std::time::Instant> = OnceLock::new();
    if site != PanicSite::None
        && get().panic == site
        && ARMED.get_or_init(std::time::Instant::now).elapsed() >= PANIC_DELAY
    {
        panic!("injected fault ({PANIC}): {what} panics on purpose");
    }
}

/// With `EDDY_TEST_PANIC=task`, spawns a tokio task that panics shortly after (call inside the
/// runtime, once the API serves).
pub fn spawn_task_fault() {
    if get().panic == PanicSite::Task {
        tokio::spawn(async {
            maybe_panic(PanicSite::Task, "a tokio task"); // arms the delay
            tokio::time::sleep(PANIC_DELAY).await;
            maybe_panic(PanicSite::Task, "a tokio task");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&'static str, &'static str)]) -> Faults {
        Faults::parse(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| *v))
    }

    #[test]
    fn only_honoured_with_the_switch() {
        assert_eq!(parse(&[]), Faults::default());
        assert_eq!(parse(&[(PANIC, "collector")]), Faults { ignored: true, ..Faults::default() });
        assert_eq!(parse(&[(SWITCH, "0"), (PANIC, "task")]).panic, PanicSite::None);
        assert_eq!(parse(&[(SWITCH, "1"), (PANIC, "collector")]).panic, PanicSite::Collector);
        assert_eq!(parse(&[(SWITCH, "1"), (PANIC, "task")]).panic, PanicSite::Task);
        assert_eq!(
            parse(&[(SWITCH, "1"), (PANIC, "everything")]),
            Faults { ignored: true, ..Faults::default() }
        );
        assert_eq!(parse(&[(WITHHOLD_CAPS, "CAP_BPF")]), Faults { ignored_caps: true, ..Faults::default() });
        assert_eq!(
            parse(&[(SWITCH, "1"), (WITHHOLD_CAPS, "CAP_BPF, CAP_NET_ADMIN")]).withhold_caps,
            1 << 39 | 1 << 12
        );
        assert!(parse(&[(SWITCH, "1"), (WITHHOLD_CAPS, "CAP_NOPE")]).ignored_caps);
    }
}
