//! HTTP API hardening against the real binary: a slowloris client is cut off at the header
//! timeout, connections over the cap are refused and counted, `/flows` filters and limits
//! (with the truncation headers), a foreign `Host` is refused (DNS rebinding), and a
//! non-loopback `listen` is warned about. All traffic stays on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use eddy_tests::agent::{STARTUP_DEADLINE, free_loopback_port};
use eddy_tests::http::parse_response;
use eddy_tests::*;

/// Writes `text` and returns the open connection.
fn partial_request(addr: SocketAddr, text: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(text.as_bytes()).expect("write");
    s
}

/// Reads until EOF (or `limit`); returns what came and how long it took.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut out = Vec::new();
    let r = s.read_to_end(&mut out);
    assert!(
        r.is_ok(),
        "connection still open after {limit:?} ({r:?}); got {:?}",
        String::from_utf8_lossy(&out)
    );
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

fn raw_get(addr: SocketAddr, path: &str, host: &str) -> HttpResponse {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    parse_response(&raw).expect("HTTP response")
}

fn drop_count(agent: &RunAgent, cause: &str) -> u64 {
    agent.status()["drops"][cause].as_u64().unwrap_or_else(|| panic!("/status drops.{cause} missing"))
}

#[test]
fn slowloris_is_disconnected_at_the_header_timeout() {
    if !require_privileges() {
        return;
    }
    let agent = RunAgent::start(&["--api-header-timeout", "1s"]);
    let host = agent.addr().to_string();
    let mut slow = partial_request(agent.addr(), &format!("GET /status HTTP/1.1\r\nHost: {host}\r\n"));
    let (got, took) = read_until_closed(&mut slow, Duration::from_secs(5));
    eprintln!("slowloris closed after {took:?}: {got:?}");
    assert!(took >= Duration::from_millis(800), "closed too early ({took:?}): {got:?}");
    assert!(took <= Duration::from_millis(2500), "closed {took:?} after the partial header (timeout 1s)");
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{got:?}");
    assert_eq!(drop_count(&agent, "api_header_timeouts"), 1);
    // A request that completes its headers is unaffected.
    assert_eq!(agent.get("/healthz").status, 200);
}

#[test]
fn connections_over_the_cap_are_refused_and_counted() {
    if !require_privileges() {
        return;
    }
    let agent = RunAgent::start(&["--api-max-connections", "3", "--api-header-timeout", "30s"]);
    let host = agent.addr().to_string();
    let held: Vec<TcpStream> = (0..3)
        .map(|_| partial_request(agent.addr(), &format!("GET /status HTTP/1.1\r\nHost: {host}\r\n")))
        .collect();
    std::thread::sleep(Duration::from_millis(300)); // the agent accepted them
    for _ in 0..2 {
        let mut extra = TcpStream::connect(agent.addr()).expect("connect");
        let (got, took) = read_until_closed(&mut extra, Duration::from_secs(2));
        assert!(got.starts_with("HTTP/1.1 503") && got.ends_with("too many connections\n"), "{got:?}");
        assert!(took < Duration::from_secs(1), "refusal took {took:?}");
    }
    drop(held);
    std::thread::sleep(Duration::from_millis(300)); // the agent sees them close
    // Until the agent sees the held connections close, a request may still be refused (and counted).
    let refused_while_freeing = std::cell::Cell::new(0);
    poll_until(Duration::from_secs(5), Duration::from_millis(100), "slots free again", || {
        match http_get(agent.addr(), "/status", Duration::from_secs(2)) {
            Ok(r) if r.status == 200 => Ok(()),
            other => {
                // A refused connection: a 503, or a reset when the agent closed before reading.
                refused_while_freeing.set(refused_while_freeing.get() + 1);
                Err(format!("{other:?}"))
            }
        }
    });
    let refused = 2 + refused_while_freeing.get();
    let status = agent.status();
    assert_eq!(status["drops"]["api_connections_refused"].as_u64(), Some(refused), "{}", status["drops"]);
    assert_eq!(status["api"]["max_connections"].as_u64(), Some(3), "{}", status["api"]);
    let metrics = agent.get("/metrics").text();
    assert!(
        metrics.lines().any(|l| *l == format!("eddy_agent_dropped_total{{cause=\"api_connections_refused\"}} {refused}")),
        "{metrics}"
    );
}

#[test]
fn flows_limit_and_protocol_filter() {
    if !require_privileges() {
        return;
    }
    let agent = RunAgent::start(&["--poll-interval", "200ms"]);
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind sink");
    let senders: Vec<UdpSocket> =
        (0..3).map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind sender")).collect();
    for s in &senders {
        s.send_to(b"eddy", sink.local_addr().expect("sink addr")).expect("send");
    }
    let ours = |flows: &[FlowRecord]| {
        senders
            .iter()
            .filter(|s| {
                !find_records(flows, "udp", s.local_addr().expect("addr"), sink.local_addr().expect("addr"))
                    .is_empty()
            })
            .count()
    };
    poll_until(Duration::from_secs(10), Duration::from_millis(200), "our 3 UDP flows in /flows", || {
        let n = ours(&agent.flows());
        if n == 3 { Ok(()) } else { Err(format!("{n} of 3")) }
    });

    let r = agent.get("/flows?limit=2&protocol=udp");
    assert_eq!(r.status, 200, "{}", r.text());
    let flows: Vec<FlowRecord> = serde_json::from_slice(&r.body).expect("a JSON array of flow records");
    assert_eq!(flows.len(), 2, "limit=2");
    assert!(flows.iter().all(|f| f.protocol == "udp"), "protocol=udp");
    assert_eq!(r.header("x-eddy-flows-truncated"), Some("true"));
    let total: usize =
        r.header("x-eddy-flows-total").and_then(|t| t.parse().ok()).expect("x-eddy-flows-total");
    assert!(total >= 6, "at least our 3 flows at each end: {total}");

    let all = agent.get("/flows?protocol=udp&limit=100000");
    let all: Vec<FlowRecord> = serde_json::from_slice(&all.body).expect("JSON");
    assert!(all.iter().all(|f| f.protocol == "udp") && ours(&all) == 3);
    let tcp = agent.get("/flows?protocol=tcp&limit=100000");
    let tcp: Vec<FlowRecord> = serde_json::from_slice(&tcp.body).expect("JSON");
    assert!(tcp.iter().all(|f| f.protocol == "tcp") && ours(&tcp) == 0);
    assert_eq!(agent.get("/flows?task=0123abcd").text(), "[]", "no ECS task here");

    for (query, says) in [
        ("limit=0", "limit \"0\": expected a number from 1 to 100000"),
        ("limit=100001", "expected a number from 1 to 100000"),
        ("protocol=icmp", "protocol \"icmp\": expected tcp or udp"),
        ("colour=blue", "unknown parameter \"colour\""),
    ] {
        let r = agent.get(&format!("/flows?{query}"));
        assert_eq!(r.status, 400, "{query}: {}", r.text());
        assert!(r.text().contains(says), "{query}: {}", r.text());
    }
}

#[test]
fn foreign_host_header_is_refused_and_counted() {
    if !require_privileges() {
        return;
    }
    let agent = RunAgent::start(&[]);
    let port = agent.addr().port();
    for host in ["evil.example", &format!("evil.example:{port}"), "localhost:1"] {
        let r = raw_get(agent.addr(), "/status", host);
        assert_eq!(r.status, 421, "Host: {host}: {}", r.text());
        assert!(r.text().contains("api_allowed_hosts"), "{}", r.text());
    }
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}"), "localhost".to_string()] {
        assert_eq!(raw_get(agent.addr(), "/healthz", &host).status, 200, "Host: {host}");
    }
    assert_eq!(drop_count(&agent, "api_host_rejected"), 3);

    let named = RunAgent::start(&["--api-allowed-hosts", "eddy.internal"]);
    let port = named.addr().port();
    assert_eq!(raw_get(named.addr(), "/healthz", &format!("eddy.internal:{port}")).status, 200);
    assert_eq!(raw_get(named.addr(), "/healthz", "evil.example").status, 421);
}

#[test]
fn non_loopback_listen_warns_once() {
    if !require_privileges() {
        return;
    }
    let port = free_loopback_port();
    let listen = format!("0.0.0.0:{port}");
    let mut child = agent_command(&["run".into(), "--listen".into(), listen.clone()]).spawn().expect("spawn");
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("[eddy-agent] {line}");
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + STARTUP_DEADLINE;
    let mut warnings = Vec::new();
    loop {
        let line =
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("agent serving");
        if line.contains("non-loopback address") {
            warnings.push(line.clone());
        }
        if line.contains("serving /healthz") {
            break;
        }
    }
    // The WARN comes right after the `serving` line.
    std::thread::sleep(Duration::from_millis(500));
    warnings.extend(rx.try_iter().filter(|l| l.contains("non-loopback address")));
    let out = agent_command(&["healthcheck".into(), "--listen".into(), listen.clone()])
        .output()
        .expect("healthcheck");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("WARN") && warnings[0].contains(&listen), "{}", warnings[0]);
    assert!(out.status.success(), "healthcheck on 0.0.0.0: {}", String::from_utf8_lossy(&out.stderr));
}
