//! The soak, scaled down for CI (`scripts/soak.sh` runs the full one): the agent in a memory cgroup
//! limited as the daemon task definition limits it, 5,000 idle TCP connections held in a namespace
//! of the test's own, a DNS flood of random names to 16 servers, `/flows`, `/metrics` and `/dns`
//! hammered, for 30 s. The same code as `eddy-loadgen soak` ([`eddy_tests::soak`]); asserted: every
//! connection held, RSS below the limit and flat, `/healthz` always 200 in < 1 s, no scan of the
//! collector missed, the known connection's bytes exact in `/flows` and in the JSON lines.

use std::time::{Duration, Instant};

use eddy_tests::soak::{Options, run};
use eddy_tests::*;

#[test]
fn soak_small_holds_memory_polls_health_and_exact_bytes() {
    if !require_privileges() {
        return;
    }
    if !std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
        && !["/sys/fs/cgroup/cgroup.controllers", "/sys/fs/cgroup/unified/cgroup.controllers"]
            .iter()
            .any(|p| std::fs::read_to_string(p).is_ok_and(|c| c.split_whitespace().any(|w| w == "memory")))
    {
        skip("no memory cgroup controller (neither cgroup v2 `memory` nor a v1 memory hierarchy)");
        return;
    }
    let mut opts = Options::full();
    opts.agent = agent_bin();
    opts.duration = Duration::from_secs(30);
    opts.connections = 5_000;
    opts.dns_rate = 300;
    opts.dns_servers = 16;
    opts.hammer_threads = 1;
    opts.sample_every = Duration::from_secs(2);
    assert!(opts.loadgen.is_file(), "{} missing: run `cargo build --bins` first", opts.loadgen.display());

    let started = Instant::now();
    let report = run(&opts).expect("soak");
    eprintln!("{}", report.render());
    eprintln!("soak_small took {:.1} s", started.elapsed().as_secs_f64());
    let failed: Vec<String> = report
        .criteria()
        .into_iter()
        .filter(|c| !c.pass)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    assert!(failed.is_empty(), "soak criteria failed:\n{}", failed.join("\n"));
    // The flood reached the agent: its DNS counters saw queries, and the drop counters are there.
    assert!(
        report.flood.queries > 0 && report.answered > 0,
        "{:?}, answered {}",
        report.flood,
        report.answered
    );
    assert!(report.status["dns"]["queries"].as_u64().is_some_and(|q| q > 0), "{}", report.status["dns"]);
    let drops = report.drop_counters();
    assert!(drops.iter().any(|(k, _)| k == "drops.tcp_map_full"), "{drops:?}");
    assert_eq!(drops.iter().find(|(k, _)| k == "drops.tcp_map_full").map(|d| d.1), Some(0), "{drops:?}");
}
