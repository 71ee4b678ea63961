//! NAT attribution through conntrack, on a Docker-like host built from namespaces: a "host"
//! namespace routes between a "container" namespace (its veth a port of the host's bridge, as on
//! `docker0`) and a "peer" namespace, with an nftables DNAT
//! of host port 8080 to the container's port 80 and a MASQUERADE of the container's subnet. The
//! agent reads the host namespace's conntrack (`--conntrack-netns`). The peer's connection to the
//! host port must carry the container's address as `translation`; the peer's server socket reached
//! by the masqueraded container must carry the container's real address and port; the container's
//! own sockets (which saw the real peers) none; bytes exact on all four ends. The container
//! namespace belongs to an ECS bridge-mode task (a process in its ECS-shaped cgroup, the fixture ECS
//! agent lists it): the peer's two flows must name that container as their remote end. With
//! `conntrack = false`, `/status` says so and the same flows are exact and untranslated.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::Duration;

use eddy_tests::ecs_fixture::{EcsCgroups, GOOD, cgroup2_root, introspection_fixture_with};

use eddy_tests::*;
use serde_json::Value;

/// The bridge-mode task of the fixture `introspection_v1_tasks_layouts.json`.
const WORKER_TASK: &str = "11112222333344445555666677778888";
const WORKER: &str = "abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd";

/// A process of the worker container: holds the container namespace, in the container's cgroup.
struct Pause(Child);

impl Pause {
    fn start(ns: &NetNs, cgroup_procs: &std::path::Path) -> Pause {
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "python3", "-c", "import sys\nsys.stdin.read()\n"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn python3");
        std::fs::write(cgroup_procs, child.id().to_string()).expect("move into the container cgroup");
        Pause(child)
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const UP: usize = 3_000;
const DOWN: usize = 700;

struct Host {
    host: NetNs,
    container: NetNs,
    peer: NetNs,
    /// Host side of the peer link (the "host IP") and the peer's address.
    host_ip: std::net::Ipv4Addr,
    peer_ip: std::net::Ipv4Addr,
    container_ip: std::net::Ipv4Addr,
}

fn nft(ns: &NetNs, rules: &str) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    child.stdin.take().ok_or("stdin")?.write_all(rules.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

fn docker_like_host() -> Result<Host, String> {
    let host = NetNs::new("nat-h");
    let container = NetNs::new("nat-c");
    let peer = NetNs::new("nat-p");
    let c_link = veth_link(&host, &container);
    let p_link = veth_link(&host, &peer);
    // Docker's layout: the container's veth is a port of a bridge, which holds the gateway address.
    let bridge = format!("br{}", c_link.subnet);
    let gw = format!("{}/24", c_link.a_v4);
    host.ip(&["addr", "del", &gw, "dev", &c_link.a_if]);
    host.ip(&["link", "add", &bridge, "type", "bridge"]);
    host.ip(&["link", "set", &c_link.a_if, "master", &bridge]);
    host.ip(&["addr", "add", &gw, "dev", &bridge]);
    host.ip(&["link", "set", &bridge, "up"]);
    container.ip(&["route", "add", "default", "via", &c_link.a_v4.to_string()]);
    netns::try_cmd("ip", &["netns", "exec", host.name(), "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    let rules = format!(
        "table ip eddy_nat {{\n\
         chain prerouting {{ type nat hook prerouting priority -100; ip daddr {host_ip} tcp dport 8080 dnat to {c}:80; }}\n\
         chain postrouting {{ type nat hook postrouting priority 100; ip saddr 10.231.{c_net}.0/24 oifname \"{p_if}\" masquerade; }}\n\
         }}\n",
        host_ip = p_link.a_v4,
        c = c_link.b_v4,
        c_net = c_link.subnet,
        p_if = p_link.a_if,
    );
    nft(&host, &rules)?;
    Ok(Host { host_ip: p_link.a_v4, peer_ip: p_link.b_v4, container_ip: c_link.b_v4, host, container, peer })
}

/// One connection: the client sends UP bytes, the server answers DOWN bytes; both hold the
/// connection open a little so that a poll sees it live. Returns (client local, server's peer).
fn exchange(
    server_ns: &NetNs,
    bind: SocketAddr,
    client_ns: &NetNs,
    connect: SocketAddr,
) -> (SocketAddr, SocketAddr) {
    let listener = server_ns.run(move || TcpListener::bind(bind).expect("bind"));
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().expect("accept");
        let mut buf = vec![0u8; UP];
        s.read_exact(&mut buf).expect("read");
        s.write_all(&vec![7u8; DOWN]).expect("write");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).expect("eof");
        peer
    });
    let local = client_ns.run(move || {
        let mut c = TcpStream::connect_timeout(&connect, Duration::from_secs(3)).expect("connect");
        c.write_all(&vec![1u8; UP]).expect("write");
        let mut buf = vec![0u8; DOWN];
        c.read_exact(&mut buf).expect("read");
        std::thread::sleep(Duration::from_millis(600));
        let local = c.local_addr().expect("addr");
        drop(c);
        local
    });
    (local, server.join().expect("server"))
}

fn find(agent: &RunAgent, local: SocketAddr, remote: SocketAddr) -> Result<Value, String> {
    let flows = agent.get_json("/flows");
    flows
        .as_array()
        .into_iter()
        .flatten()
        .rfind(|f| {
            f["local"]["addr"] == local.ip().to_string()
                && f["local"]["port"] == local.port()
                && f["remote"]["addr"] == remote.ip().to_string()
                && f["remote"]["port"] == remote.port()
                && !f["closed_at"].is_null()
        })
        .cloned()
        .ok_or_else(|| format!("no closed flow {local} -> {remote}"))
}

fn translation(f: &Value) -> Option<SocketAddr> {
    let t = f.get("translation")?;
    Some(SocketAddr::new(t["addr"].as_str()?.parse().ok()?, u16::try_from(t["port"].as_u64()?).ok()?))
}

fn run(conntrack: bool) {
    if !require_privileges() {
        return;
    }
    if Command::new("nft").arg("--version").output().is_err() {
        return skip("nft is not installed (apt-get install nftables)");
    }
    let Some(root) = cgroup2_root() else {
        return skip("no cgroup2 mount");
    };
    if Command::new("python3").arg("-V").output().is_err() {
        return skip("python3 is needed for the container process (scripts/install-deps.sh installs it)");
    }
    // Only one of this file's tests runs the ECS task (its cgroup is shared by name).
    let cgroups = conntrack.then(|| EcsCgroups::create(&root, &[(WORKER_TASK, WORKER)]));
    let h = match docker_like_host() {
        Ok(h) => h,
        Err(e) => return skip(&format!("cannot build the NAT host (nftables nat / ip_forward): {e}")),
    };
    let netns = format!("/run/netns/{}", h.host.name());
    let _pause = cgroups.as_ref().map(|c| Pause::start(&h.container, &c.procs(WORKER)));
    let introspection =
        introspection_fixture_with(Arc::new(AtomicU8::new(GOOD)), "introspection_v1_tasks_layouts.json");
    let ecs_uri = format!("http://{introspection}");
    let agent = RunAgent::start(&[
        "--ecs-agent-uri",
        &ecs_uri,
        "--ecs-refresh-interval",
        "200ms",
        "--ecs-api",
        "false",
        "--poll-interval",
        "100ms",
        "--conntrack",
        if conntrack { "true" } else { "false" },
        "--conntrack-netns",
        &netns,
    ]);
    if conntrack {
        poll_until(Duration::from_secs(10), Duration::from_millis(100), "conntrack on", || {
            let s = agent.status();
            if s["conntrack"]["state"] == "on" { Ok(()) } else { Err(s["conntrack"].to_string()) }
        });
    } else {
        assert!(agent.status()["conntrack"].is_null(), "conntrack = false: no section");
    }

    if conntrack {
        poll_until(Duration::from_secs(10), Duration::from_millis(100), "the container process", || {
            let s = agent.status()["ecs"].clone();
            if s["container_processes"].as_u64() >= Some(1) { Ok(()) } else { Err(s.to_string()) }
        });
    }

    // DNAT: the peer connects to the host port; the container's port 80 answers.
    let host_port = SocketAddr::from((h.host_ip, 8080));
    let (peer_client, seen_by_container) =
        exchange(&h.container, SocketAddr::from(([0, 0, 0, 0], 80)), &h.peer, host_port);
    let container_server = SocketAddr::from((h.container_ip, 80));
    // MASQUERADE: the container connects to the peer's server, which sees the host's address.
    let peer_server = SocketAddr::from((h.peer_ip, 9000));
    let (container_client, masqueraded) = exchange(&h.peer, peer_server, &h.container, peer_server);
    assert_eq!(masqueraded.ip(), std::net::IpAddr::from(h.host_ip), "the container was not masqueraded");
    assert_eq!(seen_by_container, peer_client, "the DNAT path must not SNAT");

    let cases = [
        (peer_client, host_port, UP, DOWN, Some(container_server)),
        (container_server, peer_client, DOWN, UP, None),
        (peer_server, masqueraded, DOWN, UP, Some(container_client)),
        (container_client, peer_server, UP, DOWN, None),
    ];
    poll_until(Duration::from_secs(10), Duration::from_millis(200), "translated flows", || {
        for (local, remote, sent, received, want) in cases {
            let f = find(&agent, local, remote)?;
            if f["bytes_sent"] != sent || f["bytes_received"] != received {
                return Err(format!(
                    "{local} -> {remote}: bytes {} / {}",
                    f["bytes_sent"], f["bytes_received"]
                ));
            }
            let want = if conntrack { want } else { None };
            if translation(&f) != want {
                return Err(format!(
                    "{local} -> {remote}: translation {:?}, want {want:?}",
                    f.get("translation")
                ));
            }
            // Through the NAT, the peer's ends are linked to the worker container behind it.
            if want.is_some() && f["remote"]["ecs"]["container_name"] != "worker" {
                return Err(format!("{local} -> {remote}: remote labels {}", f["remote"]));
            }
            // The container's own sockets are the worker's (named by their namespace).
            let in_container = conntrack && local.ip() == std::net::IpAddr::from(h.container_ip);
            if in_container && f["local"]["ecs"]["container_name"] != "worker" {
                return Err(format!("{local}: local labels {}", f["local"]));
            }
        }
        Ok(())
    });
    if conntrack {
        let s = agent.status();
        let ct = &s["conntrack"];
        assert!(ct["translated_flows"].as_u64().is_some_and(|n| n >= 2), "{ct}");
        assert_eq!(ct["undecodable"], 0, "{ct}");
        let m = agent.get("/metrics").text();
        assert!(m.lines().any(|l| l == "eddy_agent_conntrack_up 1"), "{m}");
        assert!(m.contains("eddy_agent_conntrack_translated_flows_total"), "{m}");
    }
}

#[test]
fn dnat_and_masquerade_carry_the_translation() {
    run(true);
}

#[test]
fn conntrack_off_leaves_flows_exact_and_untranslated() {
    run(false);
}

#[test]
fn unavailable_conntrack_is_reported_and_flows_are_unaffected() {
    if !require_privileges() {
        return;
    }
    let agent =
        RunAgent::start(&["--poll-interval", "100ms", "--conntrack-netns", "/run/netns/eddy-no-such-ns"]);
    let ct = poll_until(Duration::from_secs(10), Duration::from_millis(100), "conntrack unavailable", || {
        let ct = agent.status()["conntrack"].clone();
        if ct["state"] == "unavailable" { Ok(ct) } else { Err(ct.to_string()) }
    });
    assert!(ct["reason"].as_str().is_some_and(|r| r.contains("eddy-no-such-ns")), "{ct}");
    let m = agent.get("/metrics").text();
    assert!(m.lines().any(|l| l == "eddy_agent_conntrack_up 0"), "{m}");
    let server = exchanges_between_namespaces("natoff", &[(1_111, 222)]);
    poll_until(Duration::from_secs(10), Duration::from_millis(200), "the flow", || {
        let flows = agent.get_json("/flows");
        let ok = flows.as_array().into_iter().flatten().any(|f| {
            f["remote"]["port"] == server.port()
                && f["bytes_sent"] == 1_111
                && f["bytes_received"] == 222
                && f.get("translation").is_none()
        });
        if ok { Ok(()) } else { Err("not yet".into()) }
    });
}
