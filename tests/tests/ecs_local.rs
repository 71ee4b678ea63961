//! ECS identity of the local end (EC2 launch type): a real process placed in a container-shaped cgroup
//! (`<cgroup2>/ecs/<task-id>/<container-id>`, the ECS layout) talks to a server; the agent, pointed at a
//! fixture ECS agent introspection API that serves the documented shapes (`tests/fixtures/ecs`), labels
//! the flow with the task and container; the test process itself is labelled as the host. Bad answers
//! (malformed JSON, HTTP 500, a 5 s stall) leave flows flowing with `unknown` labels and counted errors.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use eddy_tests::ecs_fixture::*;
use eddy_tests::*;
use serde_json::Value;

const TASK_ID: &str = "4b5c6d7e8f9041a2b3c4d5e6f7a8b9c0";
const WEB_CONTAINER: &str = "9a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f3021";

/// The tests share one cgroup path (the fixture's container id): one at a time.
static CGROUP: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A cgroup shaped like an ECS container's, removed on drop.
struct ContainerCgroup {
    dirs: Vec<PathBuf>,
}

impl ContainerCgroup {
    fn create(root: &Path) -> ContainerCgroup {
        let task = root.join("ecs").join(TASK_ID);
        let container = task.join(WEB_CONTAINER);
        std::fs::create_dir_all(&container).unwrap_or_else(|e| panic!("mkdir {}: {e}", container.display()));
        ContainerCgroup { dirs: vec![container, task, root.join("ecs")] }
    }

    fn procs(&self) -> PathBuf {
        self.dirs[0].join("cgroup.procs")
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Runs a "container" process (python3) in the cgroup: it connects to `server` and sends `bytes`.
fn containerised_client(cg: &ContainerCgroup, server: SocketAddr, bytes: usize) -> u16 {
    let script = "import socket,sys\nsys.stdin.readline()\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])))\n\
                  print(s.getsockname()[1],flush=True)\ns.sendall(b'x'*int(sys.argv[3]))\ns.shutdown(socket.SHUT_WR)\n\
                  s.recv(1)\ns.close()\n";
    let args = [server.ip().to_string(), server.port().to_string(), bytes.to_string()];
    let mut child = python_in_cgroup(&cg.procs(), script, &args);
    let port = first_line(&mut child);
    assert!(child.wait().expect("wait").success());
    port.parse().expect("local port")
}

/// Accepts `n` connections and reads each to EOF; returns the bytes read per connection.
fn sink(listener: TcpListener, n: usize) -> std::thread::JoinHandle<Vec<usize>> {
    std::thread::spawn(move || {
        (0..n)
            .map(|_| {
                let (mut s, _) = listener.accept().expect("accept");
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).expect("read");
                buf.len()
            })
            .collect()
    })
}

fn flow_from_port(agent: &RunAgent, port: u16) -> Result<Value, String> {
    let flows: Vec<Value> = serde_json::from_str(&agent.get("/flows").text()).map_err(|e| e.to_string())?;
    flows
        .into_iter()
        .find(|f| f["local"]["port"] == port && f["direction"] == "outgoing" && !f["closed_at"].is_null())
        .ok_or_else(|| format!("no closed outgoing flow from port {port} yet"))
}

#[test]
fn containers_are_labelled_from_the_ecs_agent_and_bad_answers_degrade_to_unknown() {
    let _serial = CGROUP.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(root) = container_test_prerequisites() else { return };
    let mode = Arc::new(AtomicU8::new(MALFORMED));
    let fixture = introspection_fixture(mode.clone());
    let cg = ContainerCgroup::create(&root);
    let agent = RunAgent::start(&[
        "--poll-interval",
        "200ms",
        "--ecs-agent-uri",
        &format!("http://{fixture}"),
        "--ecs-refresh-interval",
        "200ms",
        "--closed-flow-retention",
        "100000",
        "--export-interval",
        "500ms",
    ]);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let server = listener.local_addr().expect("addr");
    let reader = sink(listener, 3);

    // 1. Malformed answers: flows still come, the container is known by its cgroup but not its task.
    poll_until(Duration::from_secs(10), Duration::from_millis(200), "malformed answers counted", || {
        let n = agent.status()["ecs"]["errors"]["ecs_agent_malformed_responses"].as_u64().unwrap_or(0);
        if n > 0 { Ok(()) } else { Err("none yet".into()) }
    });
    let port = containerised_client(&cg, server, 1_000);
    let f = poll_until(Duration::from_secs(10), Duration::from_millis(200), "flow with unknown task", || {
        flow_from_port(&agent, port)
    });
    assert_eq!(f["bytes_sent"], 1_000, "flows are not affected by bad metadata: {f}");
    assert_eq!(f["local"]["ecs"]["container_id"], WEB_CONTAINER, "{f}");
    assert_eq!(f["local"]["ecs"]["task_family"], "unknown", "{f}");

    // 2. HTTP 500 and a 5 s stall: counted, no panic, agent healthy.
    mode.store(ERROR_500, Ordering::SeqCst);
    poll_until(Duration::from_secs(10), Duration::from_millis(200), "HTTP errors counted", || {
        let n = agent.status()["ecs"]["errors"]["ecs_agent_http_errors"].as_u64().unwrap_or(0);
        if n > 0 { Ok(()) } else { Err("none yet".into()) }
    });
    mode.store(STALL, Ordering::SeqCst);
    poll_until(Duration::from_secs(20), Duration::from_millis(200), "a stalled refresh timing out", || {
        let n = agent.status()["ecs"]["errors"]["ecs_agent_unreachable"].as_u64().unwrap_or(0);
        if n > 0 { Ok(()) } else { Err("none yet".into()) }
    });
    assert_eq!(agent.get("/healthz").status, 200);

    // 3. Good answers: the container's flow carries the task's labels; the test process is the host.
    mode.store(GOOD, Ordering::SeqCst);
    poll_until(Duration::from_secs(40), Duration::from_millis(200), "a good refresh", || {
        let n = agent.status()["ecs"]["containers"].as_u64().unwrap_or(0);
        if n >= 3 { Ok(()) } else { Err(format!("{n} containers")) }
    });
    let port = containerised_client(&cg, server, 2_345);
    let f = poll_until(Duration::from_secs(10), Duration::from_millis(200), "labelled flow", || {
        flow_from_port(&agent, port)
    });
    let ecs = &f["local"]["ecs"];
    assert_eq!(f["bytes_sent"], 2_345);
    assert_eq!(ecs["cluster"], "flows", "{f}");
    assert_eq!(ecs["task_arn"], format!("arn:aws:ecs:us-east-1:123456789012:task/flows/{TASK_ID}"), "{f}");
    assert_eq!((ecs["task_family"].as_str(), ecs["task_revision"].as_str()), (Some("web"), Some("7")), "{f}");
    assert_eq!(ecs["container_name"], "web", "{f}");
    assert_eq!(ecs["container_id"], WEB_CONTAINER);
    assert_eq!(ecs["network_mode"], "awsvpc");
    assert_eq!(ecs["launch_type"], "EC2");
    // Intra-host: the server (this test process, on the host) is the remote end, no API call needed.
    assert_eq!(f["remote"]["ecs"]["container_name"], "host", "{f}");
    let server_side =
        poll_until(Duration::from_secs(10), Duration::from_millis(200), "server-side flow", || {
            let flows: Vec<Value> =
                serde_json::from_str(&agent.get("/flows").text()).map_err(|e| e.to_string())?;
            flows
                .into_iter()
                .find(|f| {
                    f["remote"]["port"] == port && f["direction"] == "incoming" && !f["closed_at"].is_null()
                })
                .ok_or_else(|| "not yet".to_string())
        });
    assert_eq!(server_side["local"]["ecs"]["container_name"], "host", "{server_side}");
    assert_eq!(server_side["remote"]["ecs"]["task_family"], "web", "{server_side}");

    let mut host = TcpStream::connect(server).expect("connect from the host");
    let host_port = host.local_addr().expect("addr").port();
    host.write_all(b"host").expect("write");
    drop(host);
    let f = poll_until(Duration::from_secs(10), Duration::from_millis(200), "host flow", || {
        flow_from_port(&agent, host_port)
    });
    assert_eq!(f["local"]["ecs"]["container_name"], "host", "{f}");
    assert_eq!(f["local"]["ecs"]["cluster"], "flows", "{f}");
    assert_eq!(reader.join().expect("sink"), vec![1_000, 2_345, 4]);

    // Series are keyed by workload: the labelled connection's bytes under local_task="web:7", with
    // its cluster and scope; the named local end carries no address, the unnamed remote one does.
    let want = format!(
        "eddy_flow_sent_bytes_total{{protocol=\"tcp\",family=\"ipv4\",direction=\"outgoing\",\
         remote_addr=\"127.0.0.1\",server_port=\"{}\",scope=\"same-host\",local_cluster=\"flows\",\
         local_task=\"web:7\",local_container=\"web\",remote_cluster=\"flows\",remote_task=\"host\",\
         remote_container=\"host\"}} 2345",
        server.port()
    );
    poll_until(Duration::from_secs(10), Duration::from_millis(200), "the web:7 series in /metrics", || {
        let text = agent.get("/metrics").text();
        let sent: Vec<&str> = text.lines().filter(|l| l.starts_with("eddy_flow_sent_bytes_total{")).collect();
        if sent.contains(&want.as_str()) { Ok(()) } else { Err(format!("no line {want} in {sent:#?}")) }
    });
}

/// Peak resident memory of a process (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmHWM")
}

#[test]
fn oversized_task_lists_are_counted_and_the_last_good_labels_stay() {
    let _serial = CGROUP.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(root) = container_test_prerequisites() else { return };
    let mode = Arc::new(AtomicU8::new(GOOD));
    let fixture = introspection_fixture(mode.clone());
    let cg = ContainerCgroup::create(&root);
    let agent = RunAgent::start(&[
        "--poll-interval",
        "200ms",
        "--ecs-agent-uri",
        &format!("http://{fixture}"),
        "--ecs-refresh-interval",
        "200ms",
        "--closed-flow-retention",
        "100000",
    ]);
    poll_until(Duration::from_secs(10), Duration::from_millis(200), "a good refresh", || {
        let n = agent.status()["ecs"]["containers"].as_u64().unwrap_or(0);
        if n >= 3 { Ok(()) } else { Err(format!("{n} containers")) }
    });
    let pid = agent.pid().expect("pid");
    let before = peak_rss_kib(pid);

    // 64 MiB answers (a valid document naming another family): refused at the 4 MiB cap, counted.
    mode.store(OVERSIZED, Ordering::SeqCst);
    poll_until(Duration::from_secs(20), Duration::from_millis(200), "oversized answers counted", || {
        let n = agent.status()["ecs"]["errors"]["ecs_agent_oversized_responses"].as_u64().unwrap_or(0);
        if n >= 3 { Ok(()) } else { Err(format!("{n} so far")) }
    });
    let metrics = agent.get("/metrics").text();
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "eddy_agent_enrichment_errors_total{provider=\"ecs\",cause=\"ecs_agent_oversized_responses\"}"
        )),
        "{metrics}"
    );
    let status = agent.status();
    let last_error = status["ecs"]["last_error"].as_str().unwrap_or_default().to_string();
    assert!(last_error.contains("larger than 4194304 bytes"), "{status}");

    // The labels are still those of the last good answer.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let server = listener.local_addr().expect("addr");
    let reader = sink(listener, 1);
    let port = containerised_client(&cg, server, 777);
    let f = poll_until(Duration::from_secs(10), Duration::from_millis(200), "labelled flow", || {
        flow_from_port(&agent, port)
    });
    assert_eq!(f["local"]["ecs"]["task_family"], "web", "last good snapshot kept: {f}");
    assert_eq!(reader.join().expect("sink"), vec![777]);

    let after = peak_rss_kib(pid);
    assert!(
        after < before + 16 * 1024,
        "the agent's peak RSS grew from {before} KiB to {after} KiB while refusing 64 MiB answers"
    );
}
