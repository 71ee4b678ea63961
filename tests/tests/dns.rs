//! DNS monitoring against a real DNS server: dnsmasq in a namespace answers `ok.test` (NOERROR),
//! NXDOMAIN for other `.test` names, and forwards `fail.test` to an upstream the test runs that
//! answers SERVFAIL; a query to an address with no server times out. Queries go over UDP and TCP
//! from another namespace; the server's answers are delayed 50 ms by netem. `/dns` must hold the
//! exact counts per (server, name, type, rcode), the latency within tolerance of the delay, and
//! `/metrics` the same counts.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eddy_tests::otlp_receiver::{OtlpReceiver, attr_str, sum_points};
use eddy_tests::*;
use serde_json::Value;

const DELAY_MS: u64 = 50;

/// A DNS query for `name` (one question, class IN), with `id`.
fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend(label.as_bytes());
    }
    m.extend([0, (qtype >> 8) as u8, qtype as u8, 0, 1]);
    m
}

/// The rcode of a response to `id`.
fn rcode(resp: &[u8], id: u16) -> u8 {
    assert!(
        resp.len() >= 12 && resp[..2] == id.to_be_bytes() && resp[2] & 0x80 != 0,
        "not a response: {resp:?}"
    );
    resp[3] & 0x0f
}

fn udp_ask(server: SocketAddr, id: u16, name: &str, qtype: u16) -> Option<u8> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    s.send_to(&query(id, name, qtype), server).expect("send");
    let mut buf = [0u8; 1500];
    s.recv_from(&mut buf).ok().map(|(n, _)| rcode(&buf[..n], id))
}

fn tcp_ask(server: SocketAddr, id: u16, name: &str, qtype: u16) -> u8 {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(3)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let q = query(id, name, qtype);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend(q);
    s.write_all(&framed).expect("write");
    let mut len = [0u8; 2];
    s.read_exact(&mut len).expect("length");
    let mut resp = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut resp).expect("response");
    rcode(&resp, id)
}

/// An upstream that answers every query with SERVFAIL (what a broken resolver does).
fn servfail_upstream(socket: UdpSocket) {
    let mut buf = [0u8; 1500];
    while let Ok((n, peer)) = socket.recv_from(&mut buf) {
        if n < 12 {
            continue;
        }
        let mut r = buf[..n].to_vec();
        r[2] |= 0x80;
        r[3] = (r[3] & 0xf0) | 2;
        let _ = socket.send_to(&r, peer);
    }
}

/// A dnsmasq process and its pid-file directory (removed when dropped).
struct Dnsmasq(Child, std::path::PathBuf);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn dnsmasq_bin() -> Option<&'static str> {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"].into_iter().find(|p| std::path::Path::new(p).exists())
}

fn start_dnsmasq(ns: &NetNs, bin: &str, listen: Ipv4Addr, upstream: SocketAddr) -> Dnsmasq {
    let dir = std::env::temp_dir().join(format!("eddy-dnsmasq-{}-{}", std::process::id(), ns.name()));
    std::fs::create_dir_all(&dir).expect("dir");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            bin,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
        ])
        .args(["--no-hosts", "--bind-interfaces", "--port=53", "--user=root", "--log-facility=-"])
        .arg(format!("--listen-address={listen}"))
        .arg(format!("--pid-file={}", dir.join("pid").display()))
        .arg("--address=/ok.test/10.9.9.9")
        .arg(format!("--server=/fail.test/{}#{}", upstream.ip(), upstream.port()))
        .arg("--local=/test/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dnsmasq");
    let d = Dnsmasq(child, dir);
    let server = SocketAddr::from((listen, 53));
    let deadline = Instant::now() + Duration::from_secs(10);
    while ns.run(move || TcpStream::connect_timeout(&server, Duration::from_millis(300)).is_err()) {
        assert!(Instant::now() < deadline, "dnsmasq did not start on {server}");
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

/// Rows of `/dns` for one server, summed over clients: (name, qtype) → row.
fn rows_for(agent: &RunAgent, server: IpAddr) -> Vec<Value> {
    let all = agent.get_json("/dns");
    let rows = all.as_array().expect("/dns is an array");
    rows.iter().filter(|r| r["server"] == server.to_string()).cloned().collect()
}

fn sum(rows: &[Value], name: &str, qtype: &str, field: &str, rcode: Option<&str>) -> u64 {
    rows.iter()
        .filter(|r| r["name"] == name && r["qtype"] == qtype)
        .map(|r| match rcode {
            Some(c) => r["rcodes"][c].as_u64().unwrap_or(0),
            None => r[field].as_u64().unwrap_or(0),
        })
        .sum()
}

#[test]
fn dns_counts_rcodes_timeouts_and_latency_against_dnsmasq() {
    if !require_privileges() {
        return;
    }
    let Some(bin) = dnsmasq_bin() else {
        return skip("dnsmasq is not installed (apt-get install dnsmasq-base)");
    };
    if let Err(why) = impairment_available() {
        return skip(&why);
    }
    let client_ns = NetNs::new("dns-c");
    let server_ns = NetNs::new("dns-s");
    // The server's answers are delayed (the impairment is on A's egress).
    let link = ImpairedLink::new(
        &server_ns,
        &client_ns,
        Impairment { delay: Duration::from_millis(DELAY_MS), loss_percent: 0 },
    );
    let IpAddr::V4(server_ip) = link.a_v4() else { panic!("IPv4 expected") };
    // Where nothing answers port 53 (the timeout case): an address in the client's own namespace.
    let silent = Ipv4Addr::new(127, 0, 0, 53);
    let upstream_sock = server_ns.run(move || UdpSocket::bind((server_ip, 5353)).expect("bind the upstream"));
    let upstream = upstream_sock.local_addr().expect("addr");
    std::thread::spawn(move || servfail_upstream(upstream_sock));
    let _dnsmasq = start_dnsmasq(&server_ns, bin, server_ip, upstream);

    let rx = OtlpReceiver::start("127.0.0.1:0".parse().expect("addr"));
    let agent = RunAgent::start(&[
        "--poll-interval",
        "200ms",
        "--dns-timeout",
        "1s",
        "--output",
        "jsonl",
        "--export-interval",
        "500ms",
        "--otlp-endpoint",
        &rx.endpoint(),
    ]);
    let server = SocketAddr::from((server_ip, 53));
    let quiet = SocketAddr::from((silent, 53));
    let answers = client_ns.run(move || {
        let mut got = Vec::new();
        for id in 1..=3 {
            got.push(udp_ask(server, id, "ok.test", 1));
        }
        got.push(Some(tcp_ask(server, 4, "ok.test", 1)));
        got.push(udp_ask(server, 5, "ok.test", 28));
        got.push(udp_ask(server, 6, "nx.test", 1));
        got.push(udp_ask(server, 7, "nx.test", 1));
        got.push(udp_ask(server, 8, "fail.test", 1));
        got.push(udp_ask(quiet, 9, "lost.test", 1));
        got
    });
    assert_eq!(
        answers,
        [Some(0), Some(0), Some(0), Some(0), Some(3), Some(3), Some(3), Some(2), None],
        "what dnsmasq said"
    );

    let mut rows = Vec::new();
    let want = |rows: &[Value]| -> Result<(), String> {
        let checks = [
            ("ok.test", "A", "queries", None, 4),
            ("ok.test", "A", "", Some("NOERROR"), 4),
            ("ok.test", "AAAA", "queries", None, 1),
            // --address covers A only; --local=/test/ makes the AAAA name unknown.
            ("ok.test", "AAAA", "", Some("NXDOMAIN"), 1),
            ("nx.test", "A", "queries", None, 2),
            ("nx.test", "A", "", Some("NXDOMAIN"), 2),
            ("fail.test", "A", "queries", None, 1),
            ("fail.test", "A", "", Some("SERVFAIL"), 1),
            ("ok.test", "A", "timeouts", None, 0),
        ];
        for (name, qtype, field, rcode, n) in checks {
            let got = sum(rows, name, qtype, field, rcode);
            if got != n {
                return Err(format!("{name} {qtype} {field}{rcode:?}: {got}, want {n}; rows: {rows:?}"));
            }
        }
        Ok(())
    };
    poll_until(Duration::from_secs(10), Duration::from_millis(200), "exact DNS counts", || {
        rows = rows_for(&agent, server_ip.into());
        want(&rows)
    });
    poll_until(Duration::from_secs(10), Duration::from_millis(200), "the timeout", || {
        let lost = rows_for(&agent, silent.into());
        match (sum(&lost, "lost.test", "A", "queries", None), sum(&lost, "lost.test", "A", "timeouts", None))
        {
            (1, 1) => Ok(()),
            other => Err(format!("lost.test (queries, timeouts) = {other:?}: {lost:?}")),
        }
    });
    // No other name or type was counted against our server (the forwarder's own traffic is not a client's).
    assert_eq!(rows.len(), 4, "{rows:?}");

    // Latency: the 50 ms the server's answers are delayed, within the histogram's resolution.
    let ok = rows.iter().find(|r| r["name"] == "ok.test" && r["qtype"] == "A").expect("ok.test row");
    let p50 = ok["latency_us"]["p50"].as_u64().expect("p50");
    let max = ok["latency_us"]["max"].as_u64().expect("max");
    assert!((DELAY_MS * 1_000 * 93 / 100..=DELAY_MS * 1_000 * 3).contains(&p50), "p50 {p50} µs: {ok}");
    eprintln!("ok.test A latency: p50 {p50} µs, max {max} µs");
    assert!(max >= DELAY_MS * 1_000 && ok["latency_us"]["p99"].as_u64().expect("p99") <= max, "{ok}");

    let status = agent.status();
    let dns = &status["dns"];
    assert!(dns["malformed"] == 0 && dns["pending"] == 0, "{dns}");
    assert!(dns["server_side"].as_u64().is_some_and(|n| n >= 8), "dnsmasq's own packets: {dns}");
    assert!(
        status["hooks"]
            .as_array()
            .expect("hooks")
            .iter()
            .any(|h| h["capability"] == "dns" && !h["chosen"].is_null())
    );

    let metrics = agent.get("/metrics").text();
    let server_label = format!("server=\"{server_ip}\"");
    let value = |name: &str, needles: &[&str]| -> u64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with(name) && l.contains(&server_label) && needles.iter().all(|n| l.contains(n))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(value("eddy_dns_queries_total", &["name=\"ok.test\"", "qtype=\"A\""]), 4, "{metrics}");
    assert_eq!(value("eddy_dns_responses_total", &["name=\"nx.test\"", "rcode=\"NXDOMAIN\""]), 2);
    assert_eq!(value("eddy_dns_responses_total", &["name=\"fail.test\"", "rcode=\"SERVFAIL\""]), 1);

    // JSON lines: the latest `dns` record of a row carries the same totals.
    poll_until(Duration::from_secs(10), Duration::from_millis(250), "dns JSON lines", || {
        let last =
            agent.stdout_lines().iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).rfind(|v| {
                v["record"] == "dns" && v["server"] == server_ip.to_string() && v["name"] == "nx.test"
            });
        match last {
            Some(v) if v["queries"] == 2 && v["rcodes"]["NXDOMAIN"] == 2 && v["time"].is_string() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // OTLP: the same counts as sums.
    poll_until(Duration::from_secs(10), Duration::from_millis(250), "dns OTLP points", || {
        let last = rx.received().into_iter().last().ok_or("nothing received")?;
        let q: i64 = sum_points(&last.request, "eddy.dns.queries")
            .into_iter()
            .filter(|(a, _)| {
                attr_str(a, "server.address") == Some(server_ip.to_string())
                    && attr_str(a, "dns.question.name").as_deref() == Some("ok.test")
                    && attr_str(a, "eddy.dns.question.type").as_deref() == Some("A")
            })
            .map(|(_, v)| v)
            .sum();
        let servfail: i64 = sum_points(&last.request, "eddy.dns.responses")
            .into_iter()
            .filter(|(a, _)| attr_str(a, "dns.response_code").as_deref() == Some("SERVFAIL"))
            .filter(|(a, _)| attr_str(a, "server.address") == Some(server_ip.to_string()))
            .map(|(_, v)| v)
            .sum();
        if (q, servfail) == (4, 1) {
            Ok(())
        } else {
            Err(format!("ok.test A queries {q}, SERVFAIL {servfail}"))
        }
    });
}

/// `[dns] tcp = off`: the UDP query is counted, the TCP one is not, and `/status` says why.
#[test]
fn dns_over_tcp_off_counts_udp_only() {
    if !require_privileges() {
        return;
    }
    let Some(bin) = dnsmasq_bin() else {
        return skip("dnsmasq is not installed (apt-get install dnsmasq-base)");
    };
    let client_ns = NetNs::new("dnst-c");
    let server_ns = NetNs::new("dnst-s");
    let server_ip = veth_link(&server_ns, &client_ns).a_v4;
    let unused = SocketAddr::from((server_ip, 9));
    let _dnsmasq = start_dnsmasq(&server_ns, bin, server_ip, unused);
    let agent = RunAgent::start(&["--poll-interval", "200ms", "--dns-tcp", "off"]);
    let server = SocketAddr::from((server_ip, 53));
    let answers =
        client_ns.run(move || [udp_ask(server, 1, "ok.test", 1), Some(tcp_ask(server, 2, "ok.test", 1))]);
    assert_eq!(answers, [Some(0), Some(0)], "what dnsmasq said");
    let mut rows = Vec::new();
    poll_until(Duration::from_secs(10), Duration::from_millis(200), "the UDP query", || {
        rows = rows_for(&agent, server_ip.into());
        match sum(&rows, "ok.test", "A", "queries", None) {
            1 => Ok(()),
            n => Err(format!("ok.test A queries: {n}; rows: {rows:?}")),
        }
    });
    // Two more polls: a TCP query would have been counted by now.
    std::thread::sleep(Duration::from_millis(500));
    rows = rows_for(&agent, server_ip.into());
    assert_eq!(sum(&rows, "ok.test", "A", "queries", None), 1, "the TCP query was counted: {rows:?}");
    assert_eq!(sum(&rows, "ok.test", "A", "", Some("NOERROR")), 1, "{rows:?}");
    let status = agent.status();
    let dns = status["hooks"].as_array().expect("hooks").iter().find(|h| h["capability"] == "dns").cloned();
    let dns = dns.expect("a dns hook");
    assert!(dns["chosen"].as_str().is_some_and(|c| c.ends_with("(port 53, UDP only)")), "{dns}");
    assert!(dns.to_string().contains("dns.tcp = off"), "{dns}");
}
