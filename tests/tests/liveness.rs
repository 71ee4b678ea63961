//! Liveness that means something: `/healthz` (and `eddy-agent healthcheck`) turn unhealthy when the
//! real collector thread stops making progress, and a panic anywhere ends the process with a log line.
//!
//! The stall is a real external fault: the test ptrace-stops the agent's `collector` thread alone
//! (PTRACE_SEIZE + PTRACE_INTERRUPT on its tid; every other thread keeps running), then releases
//! it and expects recovery. Panics are injected with the documented test switch
//! (`EDDY_TEST_FAULTS=1` + `EDDY_TEST_PANIC=collector|task`).

use std::process::Output;
use std::time::{Duration, Instant};

use eddy_tests::*;

/// The agent's documented threshold at `--poll-interval 200ms`: max(3 × 200 ms, 5 s).
const STALL_AFTER: Duration = Duration::from_secs(5);
/// Slack for the test's own polling and scheduling on a busy machine.
const SLACK: Duration = Duration::from_secs(3);
/// The panic hook's exit code.
const PANIC_EXIT: i32 = 101;

/// The tid of the thread named `name` in process `pid`.
fn thread_named(pid: u32, name: &str) -> i32 {
    let dir = format!("/proc/{pid}/task");
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {dir}: {e}")) {
        let entry = entry.expect("task entry");
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            return entry.file_name().to_string_lossy().parse().expect("tid");
        }
    }
    panic!("no thread named {name:?} in {dir}");
}

/// A thread stopped by ptrace (only that thread: a seized tracee's interrupt stop is per thread);
/// detached (and so resumed) on drop. All calls happen on the test's thread, the tracer.
struct StoppedThread(i32);

impl StoppedThread {
    fn stop(tid: i32) -> StoppedThread {
        // SAFETY: plain ptrace requests on a thread of our own child; no pointers are passed.
        let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0usize, 0usize) };
        assert_eq!(r, 0, "PTRACE_SEIZE {tid}: {}", std::io::Error::last_os_error());
        // SAFETY: as above.
        let r = unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0usize, 0usize) };
        assert_eq!(r, 0, "PTRACE_INTERRUPT {tid}: {}", std::io::Error::last_os_error());
        let mut status = 0;
        // SAFETY: waits for the interrupt stop of our tracee; `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        assert_eq!(r, tid, "waitpid {tid}: {}", std::io::Error::last_os_error());
        assert!(libc::WIFSTOPPED(status), "thread {tid} not stopped: status {status:#x}");
        StoppedThread(tid)
    }
}

impl Drop for StoppedThread {
    fn drop(&mut self) {
        // SAFETY: detaching our own stopped tracee; no pointers.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, 0usize, 0usize) };
    }
}

fn healthcheck(agent: &RunAgent) -> Output {
    agent_command(&["healthcheck".to_string(), "--listen".to_string(), agent.addr().to_string()])
        .output()
        .expect("run eddy-agent healthcheck")
}

#[test]
fn stalled_collector_turns_healthz_503_and_recovers() {
    if !require_privileges() {
        return;
    }
    let agent = RunAgent::start(&["--poll-interval", "200ms"]);
    let r = agent.get("/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"), "healthy agent");
    assert!(healthcheck(&agent).status.success(), "healthcheck of a healthy agent");
    let liveness = &agent.status()["liveness"];
    assert_eq!(liveness["state"], "ok", "{liveness}");
    assert_eq!(liveness["stall_after_seconds"].as_f64(), Some(STALL_AFTER.as_secs_f64()), "{liveness}");

    let tid = thread_named(agent.pid().expect("pid"), "collector");
    let stopped = StoppedThread::stop(tid);
    let since = Instant::now();
    let r = agent.get("/healthz");
    assert_eq!(r.status, 200, "just stopped: still within the threshold: {}", r.text());
    let unhealthy = loop {
        let r = agent.get("/healthz");
        if r.status == 503 {
            break r;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            since.elapsed() < STALL_AFTER + SLACK,
            "/healthz still 200 {:?} after the collector thread was stopped",
            since.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = since.elapsed();
    eprintln!("503 after {took:?}: {}", unhealthy.text());
    assert!(took >= STALL_AFTER - Duration::from_millis(500), "503 too early ({took:?})");
    assert!(unhealthy.text().starts_with("collector stalled: no poll completed for"), "{}", unhealthy.text());
    let out = healthcheck(&agent);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "healthcheck of a stalled agent; stderr: {stderr}");
    assert!(stderr.contains("503") && stderr.contains("collector stalled"), "{stderr}");

    drop(stopped);
    poll_until(Duration::from_secs(3), Duration::from_millis(100), "/healthz 200 after release", || {
        let r = agent.get("/healthz");
        if r.status == 200 { Ok(()) } else { Err(format!("{} {}", r.status, r.text())) }
    });
    assert!(healthcheck(&agent).status.success(), "healthcheck after recovery");
}

/// Starts the agent with a panic injected at `site`, and expects the exit with the panic
/// hook's code and a tracing line naming the message and its location.
fn panic_ends_the_process(site: &str, location: &str) {
    let env = [("EDDY_TEST_FAULTS", "1"), ("EDDY_TEST_PANIC", site)];
    let mut agent = RunAgent::start_with_env(&["--poll-interval", "200ms"], &env);
    assert_eq!(agent.log_lines_with("test fault injection is ON").len(), 1, "{}", agent.log_tail(20));
    let status = agent.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| {
        panic!("eddy-agent still runs 10 s after a panic ({site}); stderr:\n{}", agent.log_tail(30))
    });
    assert_eq!(status.code(), Some(PANIC_EXIT), "exit status {status}; stderr:\n{}", agent.log_tail(30));
    std::thread::sleep(Duration::from_millis(200)); // the stderr reader catches up
    let lines = agent.log_lines_with("panic: injected fault");
    assert_eq!(lines.len(), 1, "one ERROR line for the panic; stderr:\n{}", agent.log_tail(30));
    let line = &lines[0];
    assert!(line.contains("ERROR") && line.contains(location) && line.contains("exit_code=101"), "{line}");
}

#[test]
fn collector_thread_panic_exits_nonzero_with_a_log_line() {
    if !require_privileges() {
        return;
    }
    panic_ends_the_process("collector", "location=agent/src/pipeline.rs");
}

#[test]
fn tokio_task_panic_exits_nonzero_with_a_log_line() {
    if !require_privileges() {
        return;
    }
    panic_ends_the_process("task", "location=agent/src/faults.rs");
}

#[test]
fn fault_variables_without_the_switch_are_ignored() {
    if !require_privileges() {
        return;
    }
    let mut agent =
        RunAgent::start_with_env(&["--poll-interval", "200ms"], &[("EDDY_TEST_PANIC", "collector")]);
    assert!(agent.wait_exit(Duration::from_secs(4)).is_none(), "exited; stderr:\n{}", agent.log_tail(30));
    assert_eq!(agent.log_lines_with("EDDY_TEST_PANIC is set but ignored").len(), 1, "{}", agent.log_tail(20));
    assert_eq!(agent.get("/healthz").status, 200);
}
