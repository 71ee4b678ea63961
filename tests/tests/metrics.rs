//! `/metrics`: a real Prometheus (Debian's `prometheus` package) scrapes the agent and its query API
//! returns the exact bytes of the traffic the test made; `promtool check metrics` accepts the
//! exposition; 5,000 distinct peers stay under the series cap with the totals intact.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use eddy_tests::prometheus::{Prometheus, tool};
use eddy_tests::*;

/// One parsed sample of the text exposition.
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (head, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (head, ""),
        };
        let mut map = HashMap::new();
        // Label values in these tests never contain `",` sequences.
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").expect("label");
            map.insert(k.to_string(), v.trim_end_matches('"').to_string());
        }
        out.push(Sample { name: name.to_string(), labels: map, value: value.parse().expect("value") });
    }
    out
}

#[test]
fn prometheus_scrapes_exact_bytes_and_promtool_accepts_the_exposition() {
    if !require_privileges() {
        return;
    }
    let (Some(prometheus), Some(promtool)) = (tool("prometheus"), tool("promtool")) else {
        skip("prometheus/promtool not installed (Debian package `prometheus`; scripts/install-deps.sh test)");
        return;
    };
    let agent = RunAgent::start(&["--poll-interval", "200ms", "--export-interval", "1s"]);
    let prom = Prometheus::start(&prometheus, agent.addr());

    // Known traffic between two namespaces, to one server port.
    const PLAN: &[(usize, usize)] = &[(1_000, 2_000), (12_345, 54_321), (0, 1)];
    let server_addr = exchanges_between_namespaces("prom", PLAN);
    let up: usize = PLAN.iter().map(|p| p.0).sum();
    let down: usize = PLAN.iter().map(|p| p.1).sum();
    let port = server_addr.port();

    let checks = [
        (format!("sum(eddy_flow_sent_bytes_total{{direction=\"outgoing\",server_port=\"{port}\"}})"), up),
        (
            format!("sum(eddy_flow_received_bytes_total{{direction=\"outgoing\",server_port=\"{port}\"}})"),
            down,
        ),
        (format!("sum(eddy_flow_sent_bytes_total{{direction=\"incoming\",server_port=\"{port}\"}})"), down),
        (format!("sum(eddy_flow_received_bytes_total{{direction=\"incoming\",server_port=\"{port}\"}})"), up),
        (
            format!("sum(eddy_connections_closed_total{{direction=\"outgoing\",server_port=\"{port}\"}})"),
            PLAN.len(),
        ),
        (
            format!("sum(eddy_connections_opened_total{{direction=\"incoming\",server_port=\"{port}\"}})"),
            PLAN.len(),
        ),
    ];
    for (q, want) in &checks {
        poll_until(Duration::from_secs(30), Duration::from_millis(500), q, || match prom.query(q) {
            Ok(v) if v == *want as f64 => Ok(()),
            Ok(v) => Err(format!("{v}, want {want}")),
            Err(e) => Err(e),
        });
    }
    let rtt = prom
        .query(&format!("sum(eddy_tcp_rtt_seconds_count{{direction=\"outgoing\",server_port=\"{port}\"}})"))
        .expect("rtt histogram");
    assert!(rtt >= PLAN.len() as f64, "one RTT observation per connection at least, got {rtt}");

    // The Prometheus text format passes promtool's checks (format and naming lint).
    let body = agent.get("/metrics").text();
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check.stdin.take().expect("stdin").write_all(body.as_bytes()).expect("feed promtool");
    let out = check.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn five_thousand_peers_stay_under_the_series_cap_with_exact_totals() {
    if !require_privileges() {
        return;
    }
    const PEERS: u16 = 5_000;
    const MAX_SERIES: usize = 50;
    const DATAGRAM: usize = 10;
    let agent =
        RunAgent::start(&["--poll-interval", "200ms", "--export-interval", "1s", "--max-series", "50"]);
    // Every address of fd00:77::/64 is local in this namespace (AnyIP): 5,000 distinct peers.
    let ns = NetNs::new("card");
    ns.ip(&["-6", "route", "add", "local", "fd00:77::/64", "dev", "lo"]);
    ns.run(|| {
        let sock = UdpSocket::bind("[::1]:0").expect("bind");
        for i in 0..PEERS {
            let peer =
                SocketAddr::new(Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, i / 256 + 1, i % 256 + 1).into(), 9);
            sock.send_to(&payload(DATAGRAM, 3), peer).expect("send");
        }
    });
    let want = f64::from(PEERS) * DATAGRAM as f64;
    let ours = |s: &Sample| {
        s.labels.get("protocol").map(String::as_str) == Some("udp")
            && s.labels.get("family").map(String::as_str) == Some("ipv6")
            && s.labels.get("direction").map(String::as_str) == Some("outgoing")
            && s.labels.get("remote_addr").is_some_and(|r| r.starts_with("fd00:77:") || r == "other")
    };
    let samples = poll_until(
        Duration::from_secs(20),
        Duration::from_millis(300),
        "the 5,000 peers in /metrics",
        || {
            let samples = parse_exposition(&agent.get("/metrics").text());
            let sent: f64 = samples
                .iter()
                .filter(|s| s.name == "eddy_flow_sent_bytes_total" && ours(s))
                .map(|s| s.value)
                .sum();
            if sent == want { Ok(samples) } else { Err(format!("{sent} bytes, want {want}")) }
        },
    );
    let gauge = |name: &str| samples.iter().find(|s| s.name == name).map(|s| s.value).expect(name);
    assert!(gauge("eddy_agent_series") <= MAX_SERIES as f64, "series gauge {}", gauge("eddy_agent_series"));
    let series = samples.iter().filter(|s| s.name == "eddy_flow_sent_bytes_total").count();
    assert!(series <= MAX_SERIES, "{series} series exported, cap {MAX_SERIES}");
    assert!(gauge("eddy_agent_series_folded_total") >= f64::from(PEERS) - MAX_SERIES as f64);
    let other = samples
        .iter()
        .find(|s| s.name == "eddy_flow_sent_bytes_total" && ours(s) && s.labels["remote_addr"] == "other")
        .expect("an `other` series for udp/ipv6/outgoing");
    assert!(other.value >= want - (MAX_SERIES * DATAGRAM) as f64, "other carries the rest: {}", other.value);
    let packets: f64 =
        samples.iter().filter(|s| s.name == "eddy_flow_sent_packets_total" && ours(s)).map(|s| s.value).sum();
    assert_eq!(packets, f64::from(PEERS));
}
