//! The service map as a person uses it: two ECS "containers" (python3 processes in the cgroups of
//! the fixture tasks `web:7` and `worker:12`) talk over loopback with known byte counts, and one
//! `web` connection is refused. The agent's `/api/map` (this host), `eddy-agent map` over a real
//! Prometheus (Debian package) that scrapes the agent (the cluster), and the page rendered by a
//! headless Chromium (Debian package) all show the edge `web → worker` with the exact bytes each
//! way and the exact connection count, and the refused connection under `errors only`.

use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::Duration;

use eddy_tests::ecs_fixture::*;
use eddy_tests::map_page::{MapServer, attr_of, chromium, get_json, render};
use eddy_tests::prometheus::{Prometheus, tool};
use eddy_tests::*;
use serde_json::Value;

const WEB: (&str, &str) =
    ("4b5c6d7e8f9041a2b3c4d5e6f7a8b9c0", "9a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f3021");
const WORKER: (&str, &str) =
    ("11112222333344445555666677778888", "abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd");

/// Bytes each `web` connection sends, and what `worker` answers on it.
const PLAN: [(usize, usize); 3] = [(1_000, 7), (2_345, 70), (10, 700)];

/// `worker`: accepts `len(PLAN)` connections; reads each to EOF, then answers its reply size.
const SERVER: &str = "import socket,sys\nsys.stdin.readline()\nl=socket.socket()\nl.bind(('127.0.0.1',0))\n\
l.listen(8)\nprint(l.getsockname()[1],flush=True)\nfor n in sys.argv[1:]:\n    c,_=l.accept()\n    \
while c.recv(65536):\n        pass\n    c.sendall(b'y'*int(n))\n    c.close()\n";

/// `web`: one connection per size: send, half-close, read the answer to EOF; then one connection
/// to a closed port (refused).
const CLIENT: &str = "import socket,sys\nsys.stdin.readline()\nport=int(sys.argv[1])\nfor n in sys.argv[3:]:\n    \
s=socket.create_connection(('127.0.0.1',port))\n    s.sendall(b'x'*int(n))\n    s.shutdown(socket.SHUT_WR)\n    \
while s.recv(65536):\n        pass\n    s.close()\ntry:\n    socket.create_connection(('127.0.0.1',int(sys.argv[2])))\n\
except ConnectionRefusedError:\n    print('refused',flush=True)\n";

/// The single edge of a model, checked against the plan; `Err` while it is not there yet.
fn web_to_worker(model: &Value, port: u16) -> Result<Value, String> {
    let edges = model["edges"].as_array().ok_or("no edges")?;
    let e = edges
        .iter()
        .find(|e| e["client"] == "service:flows/web" && e["server"] == "service:flows/worker")
        .ok_or_else(|| format!("no web → worker edge in {edges:#?}"))?;
    let up: usize = PLAN.iter().map(|p| p.0).sum();
    let down: usize = PLAN.iter().map(|p| p.1).sum();
    let got = (&e["bytes_client_to_server"], &e["bytes_server_to_client"], &e["connections"]);
    if got != (&Value::from(up), &Value::from(down), &Value::from(PLAN.len())) {
        return Err(format!("bytes/connections {got:?}, want ({up}, {down}, {}): {e:#}", PLAN.len()));
    }
    assert_eq!(e["ports"], serde_json::json!([port.to_string()]), "{e:#}");
    assert_eq!(
        (&e["scope"], &e["cross_az"], &e["failed_total"]),
        (&"same-host".into(), &false.into(), &0.into()),
        "{e:#}"
    );
    Ok(e.clone())
}

/// The edge of the refused connection, alone under `errors=true`.
fn refused_edge(model: &Value) -> Result<(), String> {
    let edges = model["edges"].as_array().ok_or("no edges")?;
    match edges.as_slice() {
        [e] if e["client"] == "service:flows/web"
            && e["failed"]["refused"] == 1
            && e["failed_total"] == 1 =>
        {
            Ok(())
        }
        _ => Err(format!("want one web edge with 1 refused connection: {edges:#?}")),
    }
}

#[test]
fn the_map_shows_exact_edges_from_the_agent_from_prometheus_and_in_the_browser() {
    let Some(root) = container_test_prerequisites() else { return };
    let Some(prometheus) = tool("prometheus") else {
        skip("prometheus not installed (Debian package `prometheus`; scripts/install-deps.sh test)");
        return;
    };
    let fixture = introspection_fixture(Arc::new(AtomicU8::new(GOOD)));
    let cgroups = EcsCgroups::create(&root, &[WEB, WORKER]);
    let agent = RunAgent::start(&[
        "--poll-interval",
        "200ms",
        "--ecs-agent-uri",
        &format!("http://{fixture}"),
        "--ecs-refresh-interval",
        "200ms",
        "--export-interval",
        "500ms",
    ]);
    let prom = Prometheus::start(&prometheus, agent.addr());
    poll_until(Duration::from_secs(20), Duration::from_millis(200), "the fixture's containers", || {
        let n = agent.status()["ecs"]["containers"].as_u64().unwrap_or(0);
        if n >= 3 { Ok(()) } else { Err(format!("{n} containers")) }
    });

    let replies: Vec<String> = PLAN.iter().map(|p| p.1.to_string()).collect();
    let mut server = python_in_cgroup(&cgroups.procs(WORKER.1), SERVER, &replies);
    let port: u16 = first_line(&mut server).parse().expect("server port");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let mut args = vec![port.to_string(), closed.to_string()];
    args.extend(PLAN.iter().map(|p| p.0.to_string()));
    let mut client = python_in_cgroup(&cgroups.procs(WEB.1), CLIENT, &args);
    assert_eq!(first_line(&mut client), "refused");
    assert!(client.wait().expect("client").success());
    assert!(server.wait().expect("server").success());

    // 1. This host's map, from the agent's own series.
    let api = agent.addr();
    let edge = poll_until(
        Duration::from_secs(15),
        Duration::from_millis(300),
        "web → worker on the agent's map",
        || web_to_worker(&get_json(api, "/api/map?window=5m&search=worker")?, port),
    );
    let rows = get_json(api, "/api/map?window=5m&search=worker").expect("map");
    assert_eq!(rows["source"], "agent");
    assert_eq!(rows["nodes"].as_array().map(Vec::len), Some(2), "{rows:#}");
    assert!(edge["promql"]["bytes_client_to_server"].as_str().unwrap_or_default().contains(
        "eddy_flow_sent_bytes_total{direction=\"outgoing\",local_cluster=\"flows\",local_service=\"\",local_task=~\"web:.*\""
    ), "{edge:#}");
    poll_until(Duration::from_secs(10), Duration::from_millis(300), "the refused connection", || {
        refused_edge(&get_json(api, "/api/map?window=5m&search=web&errors=true")?)
    });
    let bad = agent.get("/api/map?window=2m");
    assert_eq!(
        (bad.status, bad.text().trim()),
        (400, "/api/map: window=\"2m\": must be one of 1m, 5m, 15m, 1h")
    );

    // 2. The cluster's map, from Prometheus.
    let map = MapServer::start(prom.addr);
    poll_until(
        Duration::from_secs(30),
        Duration::from_millis(500),
        "web → worker on the cluster map",
        || {
            let m = get_json(map.addr, "/api/map?window=5m&search=worker")?;
            if m["source"] != "prometheus" {
                return Err(format!("source {}", m["source"]));
            }
            web_to_worker(&m, port)
        },
    );
    poll_until(
        Duration::from_secs(10),
        Duration::from_millis(500),
        "the refused connection (cluster)",
        || refused_edge(&get_json(map.addr, "/api/map?window=5m&search=web&errors=true")?),
    );

    // 3. The page, rendered by a browser, from both sources.
    if chromium().is_none() {
        skip("chromium not installed (Debian package `chromium`; scripts/install-deps.sh test)");
        return;
    }
    let up: usize = PLAN.iter().map(|p| p.0).sum();
    let down: usize = PLAN.iter().map(|p| p.1).sum();
    for (addr, shot) in [(api, "map-agent.png"), (map.addr, "map-cluster.png")] {
        let dom = render(&format!("http://{addr}/map?search=worker"), shot);
        let marker = "data-client=\"service:flows/web\"";
        assert_eq!(attr_of(&dom, "id=\"status\"", "data-state").as_deref(), Some("ok"), "{dom}");
        assert_eq!(attr_of(&dom, marker, "data-bytes-c2s"), Some(up.to_string()), "{dom}");
        assert_eq!(attr_of(&dom, marker, "data-bytes-s2c"), Some(down.to_string()), "{dom}");
        assert_eq!(attr_of(&dom, marker, "data-connections"), Some(PLAN.len().to_string()), "{dom}");
        assert!(dom.contains("data-node-id=\"service:flows/worker\""), "{dom}");
        let errors =
            render(&format!("http://{addr}/map?search=web&errors=true&view=table"), "map-errors.png");
        assert_eq!(attr_of(&errors, "id=\"status\"", "data-edges").as_deref(), Some("1"), "{errors}");
        assert_eq!(attr_of(&errors, marker, "data-failed").as_deref(), Some("1"), "{errors}");
    }
}
