//! `eddy-matrix-guest`: the test driver of the kernel matrix (`scripts/kernel-matrix.sh`).
//!
//! Three roles in one static binary:
//! - `guest` (inside the VM, as PID 1's child, root, only `lo`): serves the ECS agent introspection API
//!   (fixture) on loopback, starts `eddy-agent run` pointed at it, waits for `/readyz`, records `/status`
//!   (hooks, drops), then runs the scenarios of this boot — TCP exchanges with exact byte counts (small,
//!   large, live, 500-connection churn), failed connections (refused, reset, timeout), UDP connected and
//!   unconnected, IPv6, DNS against a responder of its own, and ECS identity of processes in ECS-shaped
//!   cgroups — each asserting exact quantities against the agent's `/flows`, `/dns` and `/status`. Every
//!   result is one JSON line on the results device (the VM's second serial port) and on stdout.
//!   Two kinds of boot: the normal one (cgroup2 at /sys/fs/cgroup, every scenario but `ecs_cgroup_v1`)
//!   and `eddy.cgroup=v1` (a cgroup v1-only host: `ecs_cgroup_v1` and a few basic scenarios).
//! - `child` (inside the VM): a process of an ECS scenario, in a container's cgroups (see
//!   `containers.rs`).
//! - `report` (on the host, after the boots): reads every boot's result lines, prints one line per
//!   scenario and the hook table, writes `matrix.json`, and exits 0 only when every scenario passed.
//!
//! Each scenario uses its own server addresses and ports (127.0.2.x for TCP, 127.0.3.x for UDP, `::1`
//! ports 2x008/3x004, 127.0.0.1:53 for DNS,
//! 127.0.4.x and ports 4000x for ECS), so records never mix. A scenario runs on its own thread
//! with a time limit; a panic or a timeout fails that scenario only.
//!
//! Limits: the guest has only loopback, so "timeout" is made by a listener whose accept queue is full
//! (its kernel drops further SYNs) with `TCP_SYNCNT=1`.

use std::process::ExitCode;
use std::time::Duration;

#[path = "matrix_guest/agent.rs"]
mod agent;
#[path = "matrix_guest/containers.rs"]
mod containers;
#[path = "matrix_guest/dns.rs"]
mod dns;
#[path = "matrix_guest/ecs.rs"]
mod ecs;
#[path = "matrix_guest/failures.rs"]
mod failures;
#[path = "matrix_guest/flows.rs"]
mod flows;
#[path = "matrix_guest/owner.rs"]
mod owner;
#[path = "matrix_guest/report.rs"]
mod report;
#[path = "matrix_guest/scenario.rs"]
mod scenario;
#[path = "matrix_guest/tcp.rs"]
mod tcp;
#[path = "matrix_guest/udp.rs"]
mod udp;

use scenario::{BOTH, Scenario, V1, V2};

/// Every scenario, in the order they run (the report expects exactly these).
pub const SCENARIOS: &[Scenario] = &[
    Scenario { name: "tcp_small", limit: Duration::from_secs(60), run: tcp::small, boots: BOTH },
    Scenario { name: "tcp_large", limit: Duration::from_secs(120), run: tcp::large, boots: V2 },
    Scenario { name: "tcp_live", limit: Duration::from_secs(60), run: tcp::live, boots: V2 },
    Scenario { name: "tcp_owner", limit: Duration::from_secs(60), run: owner::scenario, boots: BOTH },
    Scenario { name: "tcp_churn", limit: Duration::from_secs(240), run: tcp::churn, boots: V2 },
    Scenario { name: "tcp_refused", limit: Duration::from_secs(40), run: failures::refused, boots: V2 },
    Scenario { name: "tcp_reset", limit: Duration::from_secs(40), run: failures::reset, boots: V2 },
    Scenario { name: "tcp_timeout", limit: Duration::from_secs(60), run: failures::timeout, boots: V2 },
    Scenario { name: "udp_connected", limit: Duration::from_secs(40), run: udp::connected, boots: BOTH },
    Scenario { name: "udp_unconnected", limit: Duration::from_secs(40), run: udp::unconnected, boots: V2 },
    Scenario { name: "ipv6_tcp", limit: Duration::from_secs(40), run: tcp::ipv6, boots: V2 },
    Scenario { name: "ipv6_udp", limit: Duration::from_secs(40), run: udp::ipv6, boots: V2 },
    Scenario { name: "dns", limit: Duration::from_secs(40), run: dns::scenario, boots: BOTH },
    Scenario { name: "ecs_cgroup_v2", limit: Duration::from_secs(90), run: ecs::cgroup_v2, boots: V2 },
    Scenario { name: "ecs_cgroup_v1", limit: Duration::from_secs(90), run: ecs::cgroup_v1, boots: V1 },
];

const USAGE: &str = "usage:
  eddy-matrix-guest guest [--results PATH] [--agent PATH] [--only NAME,...] [--churn N] [--cgroup v2|v1]
      run the scenarios of this boot (--cgroup: how /init mounted cgroups) against a fresh eddy-agent
      (in the VM: root, results to /dev/ttyS1)
  eddy-matrix-guest report --out DIR --series 5.10,6.1,6.12,5.10-cgroup-v1 [--total-seconds N]
      summarise DIR/<run>/results.jsonl: scenario lines, hook table, DIR/matrix.json
  eddy-matrix-guest child [--unshare-net | --netns PATH] ROLE ARGS...
      a process of an ECS scenario (started by the guest role inside a container cgroup)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("guest") => scenario::guest_main(&args[1..]),
        Some("report") => report::main(&args[1..]),
        Some("child") => containers::child_main(&args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("eddy-matrix-guest: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The value of `--flag VALUE` in `args`.
pub fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}
