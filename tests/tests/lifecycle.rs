//! Run mode: health and readiness, `/status` (collector, hook choice, maps, drops), a live flow in `/flows`
//! with exact bytes, and a clean SIGTERM shutdown (exit 0 within 2 s).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use eddy_tests::*;
use serde_json::Value;

const UP: usize = 1_234;
const DOWN: usize = 4_321;

fn check_status(status: &Value) {
    let mut c = Checker::new();
    c.eq("/status", "collector", status["collector"].as_str(), Some("ebpf"));
    let hooks = status["hooks"].as_array().cloned().unwrap_or_default();
    // The byte source follows what this kernel loaded: tcp_sock counters when a socket iterator
    // refreshes them, else a per-call hook (or close-time counters), with the reason stated.
    let live =
        hooks.iter().find(|h| h["capability"] == "tcp_live_counters").and_then(|h| h["chosen"].as_str());
    match hooks.iter().find(|h| h["capability"] == "tcp_bytes") {
        Some(h) => {
            let rejected: Vec<&str> = h["rejected"]
                .as_array()
                .map(|r| r.iter().filter_map(|x| x["hook"].as_str()).collect())
                .unwrap_or_default();
            match live {
                Some(iter) => {
                    eprintln!("live counters: {iter}");
                    c.eq("/status tcp_bytes", "chosen", h["chosen"].as_str(), Some(hooks::BYTES_COUNTERS));
                }
                None => {
                    eprintln!("this kernel loads no socket iterator: tcp_bytes is {}", h["chosen"]);
                    c.check(
                        h["chosen"].as_str().is_some_and(|s| s != hooks::BYTES_COUNTERS),
                        "/status tcp_bytes",
                        "without an iterator the live counters cannot be the byte source",
                    );
                    c.check(
                        rejected.contains(&hooks::BYTES_COUNTERS),
                        "/status tcp_bytes",
                        format!("the counters must be listed as rejected: {rejected:?}"),
                    );
                }
            }
            c.check(
                rejected.iter().chain(h["chosen"].as_str().iter()).any(|hook| hook.contains("fexit")),
                "/status tcp_bytes",
                format!("the fexit candidate is neither chosen nor among rejected hooks {rejected:?}"),
            );
            c.check(
                h["rejected"]
                    .as_array()
                    .is_some_and(|r| r.iter().all(|x| x["reason"].as_str().is_some_and(|s| !s.is_empty()))),
                "/status tcp_bytes",
                "every rejected hook needs a non-empty reason",
            );
        }
        None => c.fail("/status: no hook entry with capability \"tcp_bytes\""),
    }
    let maps = status["maps"].as_array().cloned().unwrap_or_default();
    match maps.iter().find(|m| m["name"] == "tcp_flows") {
        Some(m) => c.check(
            m["capacity"].as_u64().is_some_and(|n| n > 0) && m["entries"].as_u64().is_some(),
            "/status maps.tcp_flows",
            format!("capacity/entries are not numbers: {m}"),
        ),
        None => c.fail("/status: no map named \"tcp_flows\""),
    }
    for key in ["tcp_map_full", "udp_map_full", "ring_buffer_full", "udp_unparsed", "tcp_untracked_events"] {
        c.check(status["drops"][key].as_u64().is_some(), "/status drops", format!("{key} is not a number"));
    }
    c.check(status["uptime_seconds"].as_f64().is_some(), "/status", "uptime_seconds is not a number");
    let pretty = serde_json::to_string_pretty(status).unwrap_or_default();
    c.finish(&format!("/status was:\n{pretty}"));
}

#[test]
fn lifecycle_health_status_live_flow_and_sigterm() {
    if !require_privileges() {
        return;
    }
    let mut agent = RunAgent::start(&["--poll-interval", "200ms", "--closed-flow-retention", "100000"]);
    for path in ["/healthz", "/readyz"] {
        let r = agent.get(path);
        assert_eq!(r.status, 200, "GET {path}: {} {}", r.status, r.text());
    }
    check_status(&agent.status());

    // A live connection with known bytes, kept open while we look for it.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let server_addr = listener.local_addr().expect("server address");
    let mut client = TcpStream::connect(server_addr).expect("connect");
    let (mut server, peer) = listener.accept().expect("accept");
    let local = client.local_addr().expect("client address");
    assert_eq!(peer, local);
    let (client_cookie, server_cookie) = (socket_cookie(&client), socket_cookie(&server));
    client.write_all(&payload(UP, 1)).expect("client write");
    let mut buf = vec![0u8; UP.max(DOWN)];
    server.read_exact(&mut buf[..UP]).expect("server read");
    server.write_all(&payload(DOWN, 2)).expect("server write");
    client.read_exact(&mut buf[..DOWN]).expect("client read");

    let expect =
        |r: &FlowRecord, sent: usize, received: usize, direction: &str, cookie: u64| -> Result<(), String> {
            if r.bytes_sent == sent as u64
                && r.bytes_received == received as u64
                && r.closed_at.is_none()
                && r.direction == direction
                && r.cookie == Some(cookie)
            {
                Ok(())
            } else {
                Err(r.summary())
            }
        };
    poll_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        &format!("live records of {local} <-> {server_addr} with {UP}/{DOWN} bytes and closed_at null"),
        || {
            let flows = agent.flows();
            let one = |l, r| match find_records(&flows, "tcp", l, r).as_slice() {
                [rec] => Ok((*rec).clone()),
                found => Err(format!("{} records {l} -> {r}", found.len())),
            };
            let c = one(local, server_addr)?;
            let s = one(server_addr, local)?;
            expect(&c, UP, DOWN, "outgoing", client_cookie)?;
            expect(&s, DOWN, UP, "incoming", server_cookie)?;
            Ok(())
        },
    );
    let r = agent.get("/healthz");
    assert_eq!(r.status, 200, "GET /healthz after the flow check: {}", r.status);
    drop((client, server));

    let (status, took) = agent.terminate();
    assert!(
        status.success(),
        "eddy-agent exited with {status} after SIGTERM; stderr:\n{}",
        agent.log_tail(30)
    );
    assert!(took <= Duration::from_secs(2), "eddy-agent took {took:?} to exit after SIGTERM (limit 2 s)");
}

/// With the preferred byte hook disabled, the agent tries the fallbacks in order and `/status` says
/// why each one that this kernel refuses was not used (this machine refuses fentry and has no kprobes;
/// on a kernel that has them, the first one that works must be chosen).
#[test]
fn byte_hook_fallback_is_detected_and_reported() {
    if !require_privileges() {
        return;
    }
    let disabled = format!("{},{}", hooks::BYTES_COUNTERS, hooks::BYTES_TP_BTF);
    let agent = RunAgent::start(&["--poll-interval", "200ms", "--disabled-hooks", &disabled]);
    let status = agent.status();
    let hooks = status["hooks"].as_array().cloned().unwrap_or_default();
    let bytes = hooks.iter().find(|h| h["capability"] == "tcp_bytes").expect("tcp_bytes hook entry");
    let chosen = bytes["chosen"].as_str().expect("a byte source is always chosen");
    let reason = |hook_prefix: &str| -> String {
        bytes["rejected"]
            .as_array()
            .and_then(|r| r.iter().find(|x| x["hook"].as_str().is_some_and(|h| h.starts_with(hook_prefix))))
            .and_then(|x| x["reason"].as_str())
            .unwrap_or("")
            .to_string()
    };
    assert!(reason("tp_btf/").contains("disabled by config"), "{bytes}");
    assert!(reason("tcp_sock counters (live").contains("disabled by config"), "{bytes}");
    let order = ["fexit/", "kprobe/", "tcp_sock counters at close"];
    let pos =
        order.iter().position(|p| chosen.starts_with(p)).unwrap_or_else(|| panic!("unexpected {chosen}"));
    for refused in &order[..pos] {
        let r = reason(refused);
        assert!(!r.is_empty() && !r.starts_with("not needed"), "{refused} must say why it failed: {bytes}");
        eprintln!("{refused}: {r}");
    }
    if pos == 2 {
        assert!(reason("fexit/").contains("refused"), "{bytes}");
        assert!(reason("kprobe/").contains("kprobe"), "{bytes}");
    }
}

/// `eddy-agent healthcheck` (the container health check) answers 0 for a running agent and 1 once
/// it is gone.
#[test]
fn healthcheck_subcommand_follows_the_agent() {
    if !require_privileges() {
        return;
    }
    let mut agent = RunAgent::start(&[]);
    let listen = agent.addr().to_string();
    let check = || {
        agent_command(&["healthcheck".to_string(), "--listen".to_string(), listen.clone()])
            .output()
            .expect("run healthcheck")
    };
    let up = check();
    assert!(up.status.success(), "healthy agent: {}", String::from_utf8_lossy(&up.stderr));
    let (status, _) = agent.terminate();
    assert!(status.success());
    let down = check();
    assert_eq!(down.status.code(), Some(1), "stopped agent must fail the check");
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach the agent"));
}

/// A connection opened before the agent started is reported by the socket iterator with its
/// whole-connection byte counts and direction `unknown`, under its real socket cookie (on kernels
/// whose iterator reads sockets by probe reads, the agent first makes the kernel generate the
/// cookies of older sockets).
#[test]
fn connection_opened_before_the_agent_is_reported_exactly() {
    if !require_privileges() {
        return;
    }
    const BEFORE_UP: usize = 2_345;
    const BEFORE_DOWN: usize = 5_432;
    let ns = NetNs::new("preexist");
    // A process lives in the namespace, as a task's pause container does (the agent finds
    // namespaces through their processes).
    let holder = Holder(
        std::process::Command::new("ip")
            .args(["netns", "exec", ns.name(), "sleep", "600"])
            .spawn()
            .expect("spawn a namespace holder"),
    );
    let holder_ns = format!("/proc/{}/ns/net", holder.0.id());
    poll_until(Duration::from_secs(5), Duration::from_millis(10), "the holder in its namespace", || {
        let target = std::fs::read_link(&holder_ns).map_err(|e| e.to_string())?;
        let want = format!("net:[{}]", ns.inode());
        if target.to_string_lossy() == want { Ok(()) } else { Err(format!("{target:?}")) }
    });
    // Nothing may ask for the sockets' cookies before the agent runs: SO_COOKIE would create them.
    let (mut client, mut server, client_addr, server_addr) = ns.run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let server_addr = listener.local_addr().expect("server address");
        let client = TcpStream::connect(server_addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let client_addr = client.local_addr().expect("client address");
        (client, server, client_addr, server_addr)
    });
    client.write_all(&payload(BEFORE_UP, 7)).expect("client write");
    let mut buf = vec![0u8; BEFORE_UP.max(BEFORE_DOWN)];
    server.read_exact(&mut buf[..BEFORE_UP]).expect("server read");
    server.write_all(&payload(BEFORE_DOWN, 8)).expect("server write");
    client.read_exact(&mut buf[..BEFORE_DOWN]).expect("client read");

    let agent = RunAgent::start(&["--poll-interval", "200ms"]);
    let status = agent.status();
    let live = status["hooks"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["capability"] == "tcp_live_counters"))
        .and_then(|h| h["chosen"].as_str())
        .map(String::from);
    let Some(live) = live else {
        eprintln!(
            "SKIP connection_opened_before_the_agent_is_reported_exactly: no socket iterator loads on this \
             kernel (tcp_live_counters is none), so idle connections older than the agent are not seen"
        );
        return;
    };
    eprintln!("live counters: {live}; counters: {}", status["counters"]);
    let seen = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        &format!("records of the older connection {client_addr} <-> {server_addr}"),
        || {
            let flows = agent.flows();
            let one = |l, r| match find_records(&flows, "tcp", l, r).as_slice() {
                [rec] => Ok((*rec).clone()),
                found => Err(format!("{} records {l} -> {r}", found.len())),
            };
            let c = one(client_addr, server_addr)?;
            let s = one(server_addr, client_addr)?;
            for (r, sent, received) in [(&c, BEFORE_UP, BEFORE_DOWN), (&s, BEFORE_DOWN, BEFORE_UP)] {
                let ok = r.bytes_sent == sent as u64
                    && r.bytes_received == received as u64
                    && r.direction == "unknown"
                    && r.closed_at.is_none()
                    && r.netns == Some(ns.inode());
                if !ok {
                    return Err(r.summary());
                }
            }
            Ok((c.cookie, s.cookie))
        },
    );
    drop(holder);
    assert_eq!(seen, (Some(socket_cookie(&client)), Some(socket_cookie(&server))), "cookies");
}

/// A child process killed when the test ends, however it ends.
struct Holder(std::process::Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
