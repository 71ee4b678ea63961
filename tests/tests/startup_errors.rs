//! Startup problems end with a clear message and a non-zero exit, before anything is loaded:
//! missing privileges (with `collector = ebpf`), invalid configuration (exit 2), a taken port, a bad
//! cgroup path. With the default `collector = auto`, an unprivileged agent falls back to sock_diag and
//! says why in `/status`.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Output;
use std::time::Duration;

use eddy_tests::*;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut cmd = agent_command(&args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run eddy-agent")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_fails(o: &Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "exit status; stderr:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

#[test]
fn invalid_configuration_exits_2_naming_the_setting() {
    assert_fails(&run(&["run", "--poll-interval", "1ms"], &[]), 2, &["poll_interval"]);
    assert_fails(
        &run(&["capture", "--duration", "1s"], &[("EDDY_POLL_INTERVALL", "1s")]),
        2,
        &["EDDY_POLL_INTERVALL"],
    );
    assert_fails(&run(&["run"], &[("EDDY_OUTPUT", "xml")]), 2, &["environment EDDY_OUTPUT"]);
    let dir = std::env::temp_dir().join(format!("eddy-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("eddy.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:9780\"\nflow_map_entrys = 5\n").expect("write");
    let path = file.to_string_lossy().into_owned();
    assert_fails(&run(&["run", "--config", &path], &[]), 2, &["flow_map_entrys", "unknown field"]);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn out_of_range_durations_exit_2_naming_the_key() {
    for (flag, v, key) in [
        ("--aws-cache-ttl", "999999999999999h", "aws_cache_ttl"),
        ("--aws-cache-ttl", "30d", "aws_cache_ttl"),
        ("--udp-idle-timeout", "2h", "udp_idle_timeout"),
        ("--ecs-refresh-interval", "999999999s", "ecs_refresh_interval"),
        ("--otlp-timeout", "1h", "otlp_timeout"),
    ] {
        assert_fails(&run(&["capture", "--duration", "1s", flag, v], &[]), 2, &[key]);
    }
    assert_fails(&run(&["capture", "--duration", "999999999999h"], &[]), 2, &["--duration"]);
    assert_fails(&run(&["capture", "--duration", "25h"], &[]), 2, &["--duration", "100ms–24h"]);
    assert_fails(&run(&["capture", "--hold-flows", "0"], &[]), 2, &["--hold-flows", "out of range"]);
}

#[test]
fn invalid_otlp_headers_exit_2_naming_the_header_not_its_value() {
    let o = run(
        &[
            "capture",
            "--duration",
            "1s",
            "--otlp-endpoint",
            "http://127.0.0.1:1/v1/metrics",
            "--otlp-headers",
            "bad name=hdrsecret",
        ],
        &[],
    );
    assert_fails(&o, 2, &["otlp_headers", "bad name"]);
    assert!(!stderr(&o).contains("hdrsecret"), "{}", stderr(&o));
    let o = run(&["capture", "--duration", "1s"], &[("EDDY_OTLP_HEADERS", "x-api-key=abc\u{1}hdrsecret")]);
    assert_fails(&o, 2, &["otlp_headers", "x-api-key"]);
    assert!(!stderr(&o).contains("hdrsecret"), "{}", stderr(&o));
}

#[test]
fn unprivileged_process_is_told_which_capabilities_to_add() {
    if !require_privileges() {
        return;
    }
    // A copy that an unprivileged user can execute (the build tree may not be traversable by it).
    let copy = std::env::temp_dir().join(format!("eddy-agent-unpriv-{}", std::process::id()));
    std::fs::copy(agent_bin(), &copy).expect("copy agent");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = std::process::Command::new(&copy)
        .args(["capture", "--duration", "1s"])
        .env_clear()
        .env("EDDY_COLLECTOR", "ebpf")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run as nobody");
    std::fs::remove_file(&copy).ok();
    assert_fails(&out, 1, &["lacks", "CAP_BPF", "linuxParameters.capabilities.add"]);
}

#[test]
fn taken_port_is_reported_before_loading() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let started = std::time::Instant::now();
    assert_fails(&run(&["run", "--listen", &addr], &[]), 1, &["cannot listen on", &addr, "EDDY_LISTEN"]);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn cgroup_path_that_is_not_cgroup2_is_refused() {
    if !require_privileges() {
        return;
    }
    assert_fails(
        &run(&["capture", "--duration", "1s", "--cgroup-path", "/tmp", "--collector", "ebpf"], &[]),
        1,
        &["/tmp", "not a cgroup v2 mount point"],
    );
}

#[test]
fn unprivileged_auto_falls_back_to_sock_diag_and_says_why() {
    if !require_privileges() {
        return;
    }
    let copy = unprivileged_copy("fallback");
    let opts = RunOptions { uid: Some(65534), bin: Some(copy.0.clone()), ..RunOptions::default() };
    let agent = RunAgent::start_with(&["--poll-interval", "200ms"], &opts);
    let status = agent.status();
    assert_eq!(status["collector"], "sock_diag", "{status}");
    let reason = status["collector_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("eBPF collector unavailable") && reason.contains("CAP_BPF"), "{status}");
    let limits = status["collector_limits"].as_str().unwrap_or_default();
    assert!(limits.contains("misses connections that open and close between two polls"), "{status}");
    assert_eq!(status["hooks"][0]["capability"], "tcp", "{status}");
    assert_eq!(status["hooks"][0]["chosen"], "netlink sock_diag (INET_DIAG, tcp_info)", "{status}");
    let log = agent.log_tail(200);
    let warns: Vec<&str> = log.lines().filter(|l| l.contains("falling back to sock_diag")).collect();
    assert_eq!(warns.len(), 1, "one WARN line with the reason:\n{log}");
    assert!(warns[0].contains("WARN") && warns[0].contains("CAP_BPF"), "{}", warns[0]);
}
