//! The sock_diag collector, run as an unprivileged user (`nobody`) inside a network namespace the test
//! creates: exact payload bytes of a connection kept open across polls, then the same counts once it is
//! closed; on Fargate (task metadata v4 served by a fixture on the namespace's loopback) flows carry the
//! task's labels, and bad metadata (malformed JSON, HTTP 500) leaves flows flowing with `unknown` labels
//! and counted errors.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use eddy_tests::ecs_fixture::{ERROR_500, GOOD, MALFORMED, task_metadata_fixture};
use eddy_tests::*;
use serde_json::Value;

const UP: usize = 100_000;
const DOWN: usize = 7_000;
const POLL: &str = "200ms";
const NOBODY: u32 = 65534;

/// Root (namespaces, switching user) and the `ip` command; no eBPF needed.
fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        skip("needs root to create a network namespace and run the agent as nobody");
        return false;
    }
    if let Err(e) = std::process::Command::new("ip").arg("-V").output() {
        skip(&format!("the `ip` command (iproute2) is not usable: {e}"));
        return false;
    }
    true
}

fn unprivileged(copy: &BinCopy, env: &[(&str, &str)]) -> RunOptions {
    RunOptions {
        uid: Some(NOBODY),
        bin: Some(copy.0.clone()),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

fn assert_runs_as_nobody(agent: &RunAgent) {
    let pid = agent.pid().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_default();
    assert_eq!(uid.split_whitespace().nth(2), Some("65534"), "effective uid: {uid}");
}

/// A connected pair on the namespace's loopback: (client, server side, listener). The listener must stay
/// open: sock_diag tells incoming from outgoing connections by the listening sockets.
fn connected_pair() -> (TcpStream, TcpStream, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let server_addr = listener.local_addr().expect("addr");
    let client = TcpStream::connect(server_addr).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    (client, server, listener)
}

/// Exactly `UP` bytes client → server and `DOWN` bytes back, both read in full; the connection stays open.
fn exchange(client: &mut TcpStream, server: &mut TcpStream) {
    let writer = {
        let mut c = client.try_clone().expect("clone");
        std::thread::spawn(move || c.write_all(&payload(UP, 3)).expect("write up"))
    };
    let mut buf = vec![0u8; UP];
    server.read_exact(&mut buf).expect("read up");
    join(writer);
    server.write_all(&payload(DOWN, 4)).expect("write down");
    client.read_exact(&mut buf[..DOWN]).expect("read down");
}

fn flows(agent: &RunAgent) -> Vec<Value> {
    serde_json::from_str(&agent.get("/flows").text()).expect("/flows JSON")
}

fn find(flows: &[Value], local: u16, remote: u16, closed: bool) -> Option<Value> {
    flows
        .iter()
        .find(|f| {
            f["local"]["port"] == local && f["remote"]["port"] == remote && f["closed_at"].is_null() != closed
        })
        .cloned()
}

/// Both ends of the connection with exactly the exchanged bytes.
fn both_ends(agent: &RunAgent, client: u16, server: u16, closed: bool) -> (Value, Value) {
    let what = if closed { "both ends closed with exact bytes" } else { "both ends live with exact bytes" };
    poll_until(Duration::from_secs(10), Duration::from_millis(100), what, || {
        let all = flows(agent);
        let c = find(&all, client, server, closed).ok_or("no client flow")?;
        let s = find(&all, server, client, closed).ok_or("no server flow")?;
        let bytes = |f: &Value| (f["bytes_sent"].as_u64(), f["bytes_received"].as_u64());
        if bytes(&c) == (Some(UP as u64), Some(DOWN as u64))
            && bytes(&s) == (Some(DOWN as u64), Some(UP as u64))
        {
            Ok((c, s))
        } else {
            Err(format!("client {c}\nserver {s}"))
        }
    })
}

#[test]
fn unprivileged_sock_diag_reports_exact_bytes_live_and_closed() {
    if !can_run() {
        return;
    }
    let copy = unprivileged_copy("sockdiag");
    let ns = NetNs::new("sd");
    let opts = unprivileged(&copy, &[]);
    ns.run(move || {
        let agent = RunAgent::start_with(&["--collector", "sock_diag", "--poll-interval", POLL], &opts);
        assert_runs_as_nobody(&agent);
        let status = agent.status();
        assert_eq!(status["collector"], "sock_diag", "{status}");
        assert!(status["collector_reason"].is_null(), "configured, not a fallback: {status}");
        assert_eq!(
            status["hooks"][0]["rejected"][0]["reason"],
            "misses connections that open and close between two polls; bytes after the last poll"
        );
        assert_eq!(status["hooks"][1]["capability"], "udp");
        assert!(status["hooks"][1]["chosen"].is_null(), "UDP is not seen: {status}");

        let (mut client, mut server, listener) = connected_pair();
        let server_addr = listener.local_addr().expect("addr");
        let client_port = client.local_addr().expect("addr").port();
        exchange(&mut client, &mut server);
        // Two polls with the connection open.
        std::thread::sleep(Duration::from_millis(450));
        let (c, s) = both_ends(&agent, client_port, server_addr.port(), false);
        assert_eq!((c["direction"].as_str(), s["direction"].as_str()), (Some("outgoing"), Some("incoming")));
        assert_eq!(c["protocol"], "tcp");
        assert!(c["rtt_us"].as_u64().is_some() && c["packets_sent"].as_u64() > Some(1), "{c}");
        assert_eq!(c["cookie"], socket_cookie(&client), "{c}");

        // Orderly close, then the descriptors are released: both ends are reported closed, same counts.
        client.shutdown(Shutdown::Write).expect("shutdown");
        assert_eq!(read_to_eof(&server), 0);
        server.shutdown(Shutdown::Write).expect("shutdown");
        assert_eq!(read_to_eof(&client), 0);
        drop((client, server));
        let (c, s) = both_ends(&agent, client_port, server_addr.port(), true);
        assert_eq!(c["cookie"].as_u64().is_some(), s["cookie"].as_u64().is_some());
        let status = agent.status();
        assert!(status["counters"]["sockets_seen"].as_u64() > Some(0), "{status}");
        assert_eq!(status["counters"]["netlink_errors"], 0, "{status}");
        assert_eq!(status["drops"]["sockets_over_capacity"], 0, "{status}");
    });
}

fn fargate_agent(copy: &BinCopy, tmds: SocketAddr) -> RunAgent {
    let uri = format!("http://{tmds}/v4/abc");
    let opts = unprivileged(
        copy,
        &[("AWS_EXECUTION_ENV", "AWS_ECS_FARGATE"), ("ECS_CONTAINER_METADATA_URI_V4", &uri)],
    );
    // No --collector: `auto` must choose sock_diag on Fargate.
    RunAgent::start_with(&["--poll-interval", POLL, "--ecs-refresh-interval", "200ms"], &opts)
}

fn ecs_error(agent: &RunAgent, kind: &str) -> u64 {
    agent.status()["ecs"]["errors"][kind].as_u64().unwrap_or(0)
}

#[test]
fn fargate_flows_carry_the_task_labels_from_task_metadata() {
    if !can_run() {
        return;
    }
    let copy = unprivileged_copy("fargate");
    let ns = NetNs::new("fg");
    ns.run(move || {
        let tmds = task_metadata_fixture(Arc::new(AtomicU8::new(GOOD)));
        let agent = fargate_agent(&copy, tmds);
        assert_runs_as_nobody(&agent);
        let status = agent.status();
        assert_eq!(status["collector"], "sock_diag", "{status}");
        assert!(status["collector_reason"].as_str().unwrap_or_default().contains("Fargate"), "{status}");
        poll_until(Duration::from_secs(10), Duration::from_millis(100), "a task metadata refresh", || {
            let s = agent.status();
            if s["ecs"]["refreshes"].as_u64() > Some(0) { Ok(s) } else { Err(s.to_string()) }
        });
        let status = agent.status();
        assert_eq!(status["ecs"]["metadata_uri"], format!("http://{tmds}/v4/abc"));
        assert!(status["ecs"]["last_refresh_age_seconds"].as_f64().is_some(), "{status}");

        let (mut client, mut server, listener) = connected_pair();
        let server_addr = listener.local_addr().expect("addr");
        let client_port = client.local_addr().expect("addr").port();
        exchange(&mut client, &mut server);
        let (c, s) = both_ends(&agent, client_port, server_addr.port(), false);
        for (f, end) in [(&c, "local"), (&c, "remote"), (&s, "local"), (&s, "remote")] {
            let e = &f[end]["ecs"];
            assert_eq!(e["cluster"], "flows", "{end}: {f}");
            assert_eq!(
                e["task_arn"],
                "arn:aws:ecs:us-east-1:123456789012:task/flows/0123456789abcdef0123456789abcdef",
                "{end}: {f}"
            );
            assert_eq!(
                (e["task_family"].as_str(), e["task_revision"].as_str()),
                (Some("api"), Some("3")),
                "{f}"
            );
            assert_eq!(e["launch_type"], "FARGATE", "{f}");
            assert_eq!(e["availability_zone"], "us-east-1b", "{f}");
            assert_eq!(e["network_mode"], "awsvpc", "{f}");
            // The fixture's container lists no port mappings: which container owns the port is unknown.
            assert_eq!(e["container_name"], "unknown", "{f}");
        }
    });
}

#[test]
fn bad_task_metadata_leaves_flows_with_unknown_labels_and_counts_errors() {
    if !can_run() {
        return;
    }
    let copy = unprivileged_copy("fargate-bad");
    let ns = NetNs::new("fgbad");
    ns.run(move || {
        let mode = Arc::new(AtomicU8::new(MALFORMED));
        let tmds = task_metadata_fixture(mode.clone());
        let agent = fargate_agent(&copy, tmds);
        poll_until(Duration::from_secs(10), Duration::from_millis(100), "malformed answers counted", || {
            let n = ecs_error(&agent, "task_metadata_malformed_responses");
            if n >= 2 { Ok(()) } else { Err(format!("{n}")) }
        });
        let (mut client, mut server, listener) = connected_pair();
        let server_addr = listener.local_addr().expect("addr");
        let client_port = client.local_addr().expect("addr").port();
        exchange(&mut client, &mut server);
        let (c, _) = both_ends(&agent, client_port, server_addr.port(), false);
        let e = &c["local"]["ecs"];
        assert_eq!(
            (e["task_family"].as_str(), e["task_arn"].as_str()),
            (Some("unknown"), Some("unknown")),
            "{c}"
        );
        assert_eq!(e["launch_type"], "FARGATE", "{c}");

        mode.store(ERROR_500, Ordering::SeqCst);
        poll_until(Duration::from_secs(20), Duration::from_millis(100), "HTTP errors counted", || {
            let n = ecs_error(&agent, "task_metadata_http_errors");
            if n >= 2 { Ok(()) } else { Err(format!("{n}")) }
        });
        let status = agent.status();
        assert_eq!(status["ecs"]["refreshes"], 0, "{status}");
        assert!(status["ecs"]["last_error"].as_str().unwrap_or_default().contains("HTTP 500"), "{status}");
        assert_eq!(agent.get("/healthz").status, 200);
        // Flows still come with exact bytes.
        both_ends(&agent, client_port, server_addr.port(), false);
        drop((client, server));
    });
}
