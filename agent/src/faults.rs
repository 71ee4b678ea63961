//! Fault injection for the integration tests of the panic policy ([`crate::panic_hook`]):
//! `EDDY_TEST_PANIC=collector` (the collector thread panics at its first scan
//! [`PANIC_DELAY`] after its first one) or `EDDY_TEST_PANIC=task` (a tokio task panics
//! [`PANIC_DELAY`] after the API starts serving).
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
/// `EDDY_*` variables that are not configuration keys (the config loader skips them).
pub const ENV_VARS: [&str; 2] = [SWITCH, PANIC];

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
    /// A fault variable was set without the switch, or with an unknown value.
    pub ignored: bool,
}

impl Faults {
    /// From environment pairs.
    pub fn parse<'a>(mut var: impl FnMut(&str) -> Option<&'a str>) -> Faults {
        let on = var(SWITCH).is_some_and(|v| v.trim() == "1");
        match (on, var(PANIC).map(str::trim)) {
            (_, None) => Faults::default(),
            (true, Some("collector")) => Faults { panic: PanicSite::Collector, ignored: false },
            (true, Some("task")) => Faults { panic: PanicSite::Task, ignored: false },
            (_, Some(_)) => Faults { panic: PanicSite::None, ignored: true },
        }
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
    } else if f.ignored {
        tracing::warn!("{PANIC} is set but ignored (needs {SWITCH}=1 and `collector` or `task`)");
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
        assert_eq!(parse(&[(PANIC, "collector")]), Faults { panic: PanicSite::None, ignored: true });
        assert_eq!(parse(&[(SWITCH, "0"), (PANIC, "task")]).panic, PanicSite::None);
        assert_eq!(parse(&[(SWITCH, "1"), (PANIC, "collector")]).panic, PanicSite::Collector);
        assert_eq!(parse(&[(SWITCH, "1"), (PANIC, "task")]).panic, PanicSite::Task);
        assert_eq!(
            parse(&[(SWITCH, "1"), (PANIC, "everything")]),
            Faults { panic: PanicSite::None, ignored: true }
        );
    }
}
