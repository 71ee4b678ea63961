//! Harness for Eddy's privileged integration tests.
//!
//! The tests drive the real `eddy-agent` binary (built separately with `cargo build -p eddy-agent`) against
//! traffic that they generate themselves, inside network namespaces they create, and assert exact counters.
//!
//! What is here:
//! - [`require_privileges`]: skip (with a printed reason) when not root or without kernel BTF;
//! - [`netns`]: network namespaces ([`NetNs`]), veth links, static neighbours, `tc netem`;
//! - [`wire`]: a userspace "cable" between two namespaces over TUN devices that can delay and drop packets,
//!   used when `tc netem` is not available in the kernel;
//! - [`agent`]: the agent process in `capture` mode ([`Capture`]) and `run` mode ([`RunAgent`]);
//! - [`http`]: a tiny blocking HTTP/1.1 GET client;
//! - [`flow`]: the flow record as the agent prints it ([`FlowRecord`]) and matching/assertion helpers;
//! - [`traffic`]: full-duplex TCP exchanges with exact byte counts;
//! - [`fips_proxy`] and [`tls_peer`]: the FIPS egress proxy binary and real TLS peers (`openssl s_server`,
//!   nginx) with throwaway certificates, for `tests/fips_proxy.rs`;
//! - [`soak`]: the soak (agent under its memory limit, many connections, DNS flood, hammered API),
//!   run by `eddy-loadgen soak` and `tests/soak_small.rs`;
//! - [`bench`]: the overhead benchmark (agent vs baseline over loopback, churn exactness), run by
//!   `eddy-loadgen bench` and `scripts/bench-overhead.sh`;
//! - [`sock`]: socket options the tests need (cookie, `tcp_info`, linger, SYN count, bound connect).
//!
//! Limits: tests must only send traffic to loopback or to addresses inside namespaces they created
//! (10.231.X.0/24, fd00:e0d1::/64). Other agents and tests may run concurrently on the host, so every assertion
//! filters records by the test's own addresses and ports (and socket cookies where useful).

pub mod agent;
pub mod aws;
pub mod bench;
pub mod ecs_fixture;
pub mod fault_proxy;
pub mod fips_proxy;
pub mod flow;
pub mod http;
pub mod imds_fixture;
pub mod map_page;
pub mod netns;
pub mod otlp_receiver;
pub mod prometheus;
pub mod soak;
pub mod sock;
pub mod tls_peer;
pub mod traffic;
pub mod wire;

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

pub use agent::{
    BinCopy, Capture, CaptureOptions, RunAgent, RunOptions, agent_bin, agent_command, command_for,
    format_duration, unprivileged_copy,
};
pub use flow::{Checker, Endpoint, FlowRecord, describe_records, expect_one, find_records};
pub use http::{HttpResponse, http_get};
pub use netns::{
    NetNs, VethLink, add_netem, current_netns_inode, join, netem_available, own_cgroup_id, veth_link,
};
pub use sock::{
    TCP_CLOSE, TCP_ESTABLISHED, set_linger_zero, set_syn_count, socket_cookie, tcp_connect_bound, tcp_info,
    tcp_state,
};
pub use traffic::{Exchange, exchanges_between_namespaces, read_to_eof, tcp_exchange, wait_closed};
pub use wire::{ImpairedLink, Impairment, TunWire, WireConfig, impairment_available};

/// Hook names (as `/status` shows them) that the fallback tests disable.
pub mod hooks {
    /// The preferred TCP lifecycle hook: disabling it selects sockops.
    pub const LIFECYCLE_TP_BTF: &str = "tp_btf/inet_sock_set_state+tcp_destroy_sock";
    /// The preferred TCP byte source: tcp_sock counters, refreshed live by a socket iterator.
    pub const BYTES_COUNTERS: &str = "tcp_sock counters (live via iter/task_file)";
    /// The per-call TCP byte hook (application reads and writes): disabling it as well as
    /// [`BYTES_COUNTERS`] selects fentry, kprobes or close-time counters.
    pub const BYTES_TP_BTF: &str = "tp_btf/sock_send_length+sock_recv_length";
    /// The socket iterators that find sockets with `bpf_sock_from_file`: disabling both selects the
    /// one that finds them by their inode (what 5.10 runs).
    pub const ITER_SOCK_FROM_FILE: &str = "iter/task_file,iter/task_file (probe reads)";
}

/// When set to `1`, a missing privilege makes tests fail instead of skipping (for CI runners that must run them).
pub const NO_SKIP_ENV: &str = "EDDY_TEST_NO_SKIP";

/// Name of the running test, as libtest names its thread (falls back to `<test>`).
pub fn test_name() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => std::env::args()
            .next()
            .and_then(|arg0| Path::new(&arg0).file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "<test>".to_string()),
    }
}

/// Prints `SKIP <test>: <reason>` to stderr (or panics when [`NO_SKIP_ENV`] is `1`).
pub fn skip(reason: &str) {
    let name = test_name();
    if std::env::var(NO_SKIP_ENV).as_deref() == Ok("1") {
        panic!("{name}: cannot run and {NO_SKIP_ENV}=1 forbids skipping: {reason}");
    }
    // Straight to the stderr handle: libtest's output capture only intercepts the print macros, and a skip
    // must be visible even without --nocapture.
    let _ = writeln!(std::io::stderr(), "SKIP {name}: {reason}");
}

/// Checks what every privileged test needs: root (euid 0), kernel BTF and the `ip` command.
///
/// Returns false after printing `SKIP <test>: <reason>`; callers `return` early.
pub fn require_privileges() -> bool {
    if !nix::unistd::geteuid().is_root() {
        skip("needs root (euid 0) to load eBPF and create network namespaces");
        return false;
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        skip("kernel BTF (/sys/kernel/btf/vmlinux) is missing; the agent needs it for CO-RE");
        return false;
    }
    if let Err(e) = std::process::Command::new("ip").arg("-V").output() {
        skip(&format!("the `ip` command (iproute2) is not usable: {e}"));
        return false;
    }
    true
}

/// Polls `probe` until it returns `Some`, or panics after `timeout` with `what` and the last `describe` output.
pub fn poll_until<T>(
    timeout: Duration,
    interval: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last state: {last}");
                }
            }
        }
        std::thread::sleep(interval);
    }
}

/// A byte pattern of length `len` (content is irrelevant to the agent; a pattern helps debugging).
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}
