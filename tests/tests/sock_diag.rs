//! The sock_diag collector, run as an unprivileged user (`nobody`) inside a network namespace the test
//! creates: exact payload bytes of a connection kept open across polls, then the same counts once it is
//! closed, and nothing from another namespace (it cannot enter one, and `/status` says so); on Fargate
//! (task metadata v4 served by a fixture on the namespace's loopback) flows carry the task's labels, and
//! bad metadata (malformed JSON, HTTP 500) leaves flows flowing with `unknown` labels and counted errors.
//! Run as root in the host's namespaces it dumps every network namespace with a process in it: both ends
//! of connections between two namespaces (an awsvpc-style task and a bridge-mode container, each held by
//! processes in ECS-shaped cgroups) with exact bytes, each end with its own namespace's inode and the ECS
//! labels its namespace names; a namespace whose last process exits has its open flows closed.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use eddy_tests::ecs_fixture::{
    ERROR_500, EcsCgroups, GOOD, MALFORMED, cgroup2_root, introspection_fixture_with, task_metadata_fixture,
};
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
    exchange_sized(client, server, UP, DOWN);
}

/// Exactly `up` bytes client → server and `down` bytes back, both read in full; the connection stays open.
fn exchange_sized(client: &mut TcpStream, server: &mut TcpStream, up: usize, down: usize) {
    let writer = {
        let mut c = client.try_clone().expect("clone");
        std::thread::spawn(move || c.write_all(&payload(up, 3)).expect("write up"))
    };
    let mut buf = vec![0u8; up.max(down)];
    server.read_exact(&mut buf[..up]).expect("read up");
    join(writer);
    server.write_all(&payload(down, 4)).expect("write down");
    client.read_exact(&mut buf[..down]).expect("read down");
}

/// A process that holds a network namespace (as a pause container does): `sleep` in `ns`, moved into
/// a cgroup when one is given; killed on drop.
struct Holder(Child);

impl Holder {
    fn start(ns: &NetNs, cgroup_procs: Option<&std::path::Path>) -> Holder {
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "sleep", "600"])
            .spawn()
            .expect("spawn a namespace holder");
        let holder = Holder(child);
        if let Some(procs) = cgroup_procs {
            std::fs::write(procs, holder.0.id().to_string()).expect("move the holder into its cgroup");
        }
        // `ip netns exec` enters the namespace, then execs: wait until the process is in it.
        let link = format!("/proc/{}/ns/net", holder.0.id());
        poll_until(Duration::from_secs(5), Duration::from_millis(10), "the holder in its namespace", || {
            use std::os::unix::fs::MetadataExt;
            let ino = std::fs::metadata(&link).map(|m| m.ino()).map_err(|e| e.to_string())?;
            if ino == ns.inode() { Ok(()) } else { Err(format!("{link}: {ino}")) }
        });
        holder
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    let ns_inode = ns.inode();
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
        // It cannot enter other network namespaces, and says so.
        assert_eq!(status["hooks"][2]["capability"], "namespaces", "{status}");
        assert_eq!(status["hooks"][2]["chosen"], "the agent's own network namespace only", "{status}");
        let why = status["hooks"][2]["rejected"][0]["reason"].as_str().unwrap_or_default();
        assert!(why.contains("CAP_SYS_ADMIN"), "{status}");
        let limits = status["collector_limits"].as_str().unwrap_or_default();
        assert!(limits.contains("only the agent's network namespace"), "{status}");

        // A connection in another namespace, held by a process there: not this agent's to see.
        let other = NetNs::new("sd-other");
        let _holder = Holder::start(&other, None);
        let (mut oc, mut os, ol) = other.run(connected_pair);
        exchange(&mut oc, &mut os);

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
        assert_eq!((c["netns"].as_u64(), s["netns"].as_u64()), (Some(ns_inode), Some(ns_inode)));
        let all = flows(&agent);
        let foreign: Vec<&Value> = all.iter().filter(|f| f["netns"].as_u64() != Some(ns_inode)).collect();
        assert!(foreign.is_empty(), "only its own namespace ({ns_inode}): {foreign:?}");
        let status = agent.status();
        assert_eq!(status["counters"]["namespaces"], 1, "{status}");
        let maps = status["maps"].as_array().cloned().unwrap_or_default();
        let ns_map = maps.iter().find(|m| m["name"] == "sock_diag_namespaces").expect("namespaces map");
        assert_eq!((ns_map["capacity"].as_u64(), ns_map["entries"].as_u64()), (Some(1), Some(1)), "{status}");
        drop((oc, os, ol));

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

// The ECS tasks of `introspection_v1_tasks_layouts.json`: an awsvpc task (pause + web) and a
// bridge-mode one (worker).
const WEB_TASK: &str = "4b5c6d7e8f9041a2b3c4d5e6f7a8b9c0";
const PAUSE: &str = "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a7988";
const WEB: &str = "9a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f3021";
const WORKER_TASK: &str = "11112222333344445555666677778888";
const WORKER: &str = "abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd";
/// The IPv6 connection's payloads (the IPv4 one uses `UP`/`DOWN`).
const UP6: usize = 12_345;
const DOWN6: usize = 678;

/// The open (or closed) record whose local end is `local` and remote end `remote`.
fn find_tuple(flows: &[Value], local: SocketAddr, remote: SocketAddr, closed: bool) -> Option<Value> {
    let is = |e: &Value, a: SocketAddr| {
        e["port"] == a.port() && e["addr"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) == Some(a.ip())
    };
    flows
        .iter()
        .find(|f| is(&f["local"], local) && is(&f["remote"], remote) && f["closed_at"].is_null() != closed)
        .cloned()
}

/// The record of one end, once it has exactly `(sent, received)` bytes.
fn end_with(
    agent: &RunAgent,
    local: SocketAddr,
    remote: SocketAddr,
    closed: bool,
    bytes: (u64, u64),
) -> Value {
    let what = format!("{local} → {remote} (closed: {closed}) with {bytes:?} bytes");
    poll_until(Duration::from_secs(10), Duration::from_millis(100), &what, || {
        let f = find_tuple(&flows(agent), local, remote, closed).ok_or("no such flow")?;
        if (f["bytes_sent"].as_u64(), f["bytes_received"].as_u64()) == (Some(bytes.0), Some(bytes.1)) {
            Ok(f)
        } else {
            Err(f.to_string())
        }
    })
}

fn who(l: &Value) -> (String, String, String) {
    let s = |k: &str| l[k].as_str().unwrap_or("-").to_string();
    (s("task_family"), s("container_name"), s("network_mode"))
}

fn labels(family: &str, container: &str, mode: &str) -> (String, String, String) {
    (family.into(), container.into(), mode.into())
}

#[test]
fn root_sock_diag_dumps_every_network_namespace_with_exact_bytes_and_ecs_labels() {
    if !can_run() {
        return;
    }
    let Some(root) = cgroup2_root() else {
        return skip("no cgroup2 mount for the ECS-shaped container cgroups");
    };
    let cgroups = EcsCgroups::create(&root, &[(WEB_TASK, PAUSE), (WEB_TASK, WEB), (WORKER_TASK, WORKER)]);
    let (task, bridge) = (NetNs::new("sd-awsvpc"), NetNs::new("sd-bridge"));
    let link = veth_link(&task, &bridge);
    // The awsvpc task: its pause process and its only application container in the task namespace;
    // the bridge-mode container alone in its own.
    let _pause = Holder::start(&task, Some(&cgroups.procs(PAUSE)));
    let _web = Holder::start(&task, Some(&cgroups.procs(WEB)));
    let worker = Holder::start(&bridge, Some(&cgroups.procs(WORKER)));

    let introspection =
        introspection_fixture_with(Arc::new(AtomicU8::new(GOOD)), "introspection_v1_tasks_layouts.json");
    // Root in the host's network and pid namespaces, sock_diag forced.
    let agent = RunAgent::start(&[
        "--collector",
        "sock_diag",
        "--poll-interval",
        POLL,
        "--ecs-agent-uri",
        &format!("http://{introspection}"),
        "--ecs-refresh-interval",
        "200ms",
        "--ecs-api",
        "false",
    ]);
    let status = agent.status();
    assert_eq!(status["collector"], "sock_diag", "{status}");
    assert_eq!(status["hooks"][2]["capability"], "namespaces", "{status}");
    assert_eq!(
        status["hooks"][2]["chosen"],
        "every network namespace with a process in /proc (setns, one netlink socket each)",
        "{status}"
    );
    let limits = status["collector_limits"].as_str().unwrap_or_default();
    assert!(limits.contains("every network namespace with a process"), "{status}");
    poll_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "the /proc walk and the task list",
        || {
            let s = agent.status()["ecs"].clone();
            let ok = s["container_processes"].as_u64() >= Some(3) && s["containers"].as_u64() >= Some(4);
            if ok { Ok(()) } else { Err(s.to_string()) }
        },
    );

    // Two connections from the task namespace to the bridge namespace, over IPv4 and IPv6; both stay
    // open across polls.
    let (l4, l6) = bridge.run(move || {
        let l4 = TcpListener::bind((link.b_v4, 0)).expect("bind v4");
        let l6 = TcpListener::bind((link.b_v6, 0)).expect("bind v6");
        (l4, l6)
    });
    let (s4_addr, s6_addr) = (l4.local_addr().expect("addr"), l6.local_addr().expect("addr"));
    let (mut c4, mut c6) = task.run(move || {
        (TcpStream::connect(s4_addr).expect("connect v4"), TcpStream::connect(s6_addr).expect("connect v6"))
    });
    let (mut s4, _) = l4.accept().expect("accept v4");
    let (mut s6, _) = l6.accept().expect("accept v6");
    exchange_sized(&mut c4, &mut s4, UP, DOWN);
    exchange_sized(&mut c6, &mut s6, UP6, DOWN6);
    let (c4_addr, c6_addr) = (c4.local_addr().expect("addr"), c6.local_addr().expect("addr"));
    std::thread::sleep(Duration::from_millis(450));

    let (up, down) = (UP as u64, DOWN as u64);
    let c = end_with(&agent, c4_addr, s4_addr, false, (up, down));
    let s = end_with(&agent, s4_addr, c4_addr, false, (down, up));
    // Each end found in its own namespace.
    assert_eq!(c["netns"].as_u64(), Some(task.inode()), "{c}");
    assert_eq!(s["netns"].as_u64(), Some(bridge.inode()), "{s}");
    assert_eq!((c["direction"].as_str(), s["direction"].as_str()), (Some("outgoing"), Some("incoming")));
    assert_eq!(c["cookie"], socket_cookie(&c4), "{c}");
    assert_eq!(s["cookie"], socket_cookie(&s4), "{s}");
    // The sockets' cgroup (this test's) and process (unknown to sock_diag) name no container: the
    // namespace does — the awsvpc task's only application container, the bridge-mode container.
    assert_eq!(who(&c["local"]["ecs"]), labels("web", "web", "awsvpc"), "named by its netns: {c}");
    assert_eq!(c["local"]["ecs"]["container_id"], WEB, "{c}");
    assert_eq!(who(&s["local"]["ecs"]), labels("worker", "worker", "bridge"), "named by its netns: {s}");
    assert_eq!(s["local"]["ecs"]["container_id"], WORKER, "{s}");
    let (up6, down6) = (UP6 as u64, DOWN6 as u64);
    let c6r = end_with(&agent, c6_addr, s6_addr, false, (up6, down6));
    let s6r = end_with(&agent, s6_addr, c6_addr, false, (down6, up6));
    assert_eq!((c6r["netns"].as_u64(), s6r["netns"].as_u64()), (Some(task.inode()), Some(bridge.inode())));
    assert_eq!((c6r["family"].as_str(), s6r["family"].as_str()), (Some("ipv6"), Some("ipv6")));

    let status = agent.status();
    assert!(status["counters"]["namespaces"].as_u64() >= Some(3), "host, task, bridge: {status}");
    assert_eq!(status["drops"]["namespaces_over_limit"], 0, "{status}");
    assert_eq!(status["drops"]["namespace_restore_failed"], 0, "{status}");
    assert_eq!(status["counters"]["netlink_errors"], 0, "{status}");

    // Orderly close of the IPv4 connection: both ends closed, same counts, same namespaces.
    c4.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_to_eof(&s4), 0);
    s4.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_to_eof(&c4), 0);
    drop((c4, s4));
    let c = end_with(&agent, c4_addr, s4_addr, true, (up, down));
    let s = end_with(&agent, s4_addr, c4_addr, true, (down, up));
    assert_eq!((c["netns"].as_u64(), s["netns"].as_u64()), (Some(task.inode()), Some(bridge.inode())));
    // Closed flows get their remote end from the peer flow on this host.
    assert_eq!(who(&c["remote"]["ecs"]), labels("worker", "worker", "bridge"), "{c}");
    assert_eq!(who(&s["remote"]["ecs"]), labels("web", "web", "awsvpc"), "{s}");

    // The bridge namespace's last process exits: its socket is closed and its open flow reported
    // closed with its counters (the task end stays open).
    let closed_before = agent.status()["counters"]["namespaces_closed"].as_u64().unwrap_or(0);
    drop(worker);
    let s6r = end_with(&agent, s6_addr, c6_addr, true, (down6, up6));
    assert_eq!(s6r["netns"].as_u64(), Some(bridge.inode()), "{s6r}");
    let c6r = end_with(&agent, c6_addr, s6_addr, false, (up6, down6));
    assert_eq!(c6r["netns"].as_u64(), Some(task.inode()), "{c6r}");
    let status = agent.status();
    assert!(status["counters"]["namespaces_closed"].as_u64() > Some(closed_before), "{status}");
    drop((c6, s6, l4, l6));
}
