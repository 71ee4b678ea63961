//! The three ECS network layouts, recreated with real processes on this host: an awsvpc task
//! (a pause process and a `web` server sharing one network namespace), a bridge-mode task (`worker`,
//! its own namespace), and a host-mode task (`node-exporter`, the host namespace) — each process in
//! its ECS-shaped cgroup (`<cgroup2>/ecs/<task-id>/<container-id>`). The fixture ECS agent lists the
//! three tasks. Every flow must carry the right local and remote labels; a socket whose cgroup and
//! process name no container (a thread of this test inside the awsvpc namespace, as on cgroup v1
//! hosts where the cgroup v2 id is the root) is named by its network namespace.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::Duration;

use eddy_tests::ecs_fixture::{EcsCgroups, GOOD, cgroup2_root, introspection_fixture_with};
use eddy_tests::netns::{NetNs, veth_link};
use eddy_tests::traffic::read_to_eof;
use eddy_tests::*;
use serde_json::Value;

const WEB_TASK: &str = "4b5c6d7e8f9041a2b3c4d5e6f7a8b9c0";
const PAUSE: &str = "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a7988";
const WEB: &str = "9a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f3021";
const WORKER_TASK: &str = "11112222333344445555666677778888";
const WORKER: &str = "abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd";
const HOST_TASK: &str = "99990000aaaabbbbccccddddeeeeffff";
const EXPORTER: &str = "5555666677778888999900001111222233334444555566667777888899990000";

const PAUSE_PY: &str = "import sys\nsys.stdin.readline()\nsys.stdin.read()\n";
const SERVER_PY: &str = "import socket,sys\nsys.stdin.readline()\nl=socket.socket()\n\
    l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\nl.bind((sys.argv[1],int(sys.argv[2])))\nl.listen(16)\n\
    print('ready',flush=True)\nfor _ in range(int(sys.argv[3])):\n  c,_=l.accept()\n  t=0\n  while True:\n\
    \x20   b=c.recv(65536)\n    if not b: break\n    t+=len(b)\n  print(t,flush=True)\n  c.sendall(b'k')\n  c.close()\n";
const CLIENT_PY: &str = "import socket,sys\nsys.stdin.readline()\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])))\n\
    print(s.getsockname()[1],flush=True)\ns.sendall(b'x'*int(sys.argv[3]))\ns.shutdown(socket.SHUT_WR)\n\
    s.recv(1)\ns.close()\n";

/// A python3 "container" process: started (in `ns` if given), moved into its cgroup, then released.
struct Proc {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Proc {
    fn start(ns: Option<&NetNs>, cgroup_procs: &Path, script: &str, args: &[String]) -> Proc {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.name(), "python3", "-c", script]);
                c
            }
            None => {
                let mut c = Command::new("python3");
                c.args(["-c", script]);
                c
            }
        };
        let mut child =
            cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn python3");
        std::fs::write(cgroup_procs, child.id().to_string()).expect("move into the container cgroup");
        child.stdin.as_mut().expect("stdin").write_all(b"go\n").expect("release");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        Proc { child, out }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).expect("read a line");
        l.trim().to_string()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn flows(agent: &RunAgent) -> Vec<Value> {
    serde_json::from_str(&agent.get("/flows").text()).unwrap_or_default()
}

fn closed(agent: &RunAgent, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    poll_until(Duration::from_secs(10), Duration::from_millis(200), what, || {
        flows(agent)
            .into_iter()
            .find(|f| !f["closed_at"].is_null() && pred(f))
            .ok_or_else(|| "not yet".into())
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
fn awsvpc_bridge_and_host_layouts_are_labelled_on_both_ends() {
    if !require_privileges() {
        return;
    }
    let Some(root) = cgroup2_root() else {
        return skip("no cgroup2 mount");
    };
    if Command::new("python3").arg("-V").output().is_err() {
        return skip("python3 is needed for the container processes (scripts/install-deps.sh installs it)");
    }
    let cgroups = EcsCgroups::create(
        &root,
        &[(WEB_TASK, PAUSE), (WEB_TASK, WEB), (WORKER_TASK, WORKER), (HOST_TASK, EXPORTER)],
    );
    let (awsvpc, bridge) = (NetNs::new("task-awsvpc"), NetNs::new("task-bridge"));
    let link = veth_link(&awsvpc, &bridge);
    let web_addr = SocketAddr::from((link.a_v4, 8080));

    let introspection =
        introspection_fixture_with(Arc::new(AtomicU8::new(GOOD)), "introspection_v1_tasks_layouts.json");
    let agent = RunAgent::start(&[
        "--poll-interval",
        "200ms",
        "--ecs-agent-uri",
        &format!("http://{introspection}"),
        "--ecs-refresh-interval",
        "200ms",
        "--ecs-api",
        "false",
        "--closed-flow-retention",
        "100000",
    ]);

    // The awsvpc task: the pause process holds the namespace, the web container serves in it.
    let _pause = Proc::start(Some(&awsvpc), &cgroups.procs(PAUSE), PAUSE_PY, &[]);
    let mut web = Proc::start(
        Some(&awsvpc),
        &cgroups.procs(WEB),
        SERVER_PY,
        // One more connection than it gets: the web container stays up (the namespace's only app).
        &[web_addr.ip().to_string(), web_addr.port().to_string(), "3".into()],
    );
    assert_eq!(web.line(), "ready");
    poll_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "the /proc walk and the task list",
        || {
            let s = agent.status()["ecs"].clone();
            let ok = s["container_processes"].as_u64() >= Some(2) && s["containers"].as_u64() >= Some(4);
            if ok { Ok(()) } else { Err(s.to_string()) }
        },
    );

    // 1. bridge → awsvpc: the worker's client and the web server, both labelled by cgroup, each
    //    the other's remote end (intra-host: no API).
    let mut worker = Proc::start(
        Some(&bridge),
        &cgroups.procs(WORKER),
        CLIENT_PY,
        &[web_addr.ip().to_string(), web_addr.port().to_string(), "3000".into()],
    );
    let worker_port: u16 = worker.line().parse().expect("worker port");
    assert_eq!(web.line(), "3000");
    let f = closed(&agent, "the worker's flow", |f| {
        f["local"]["port"] == worker_port
            && f["remote"]["port"] == web_addr.port()
            && f["direction"] == "outgoing"
    });
    assert_eq!(f["bytes_sent"], 3000, "{f}");
    assert_eq!(who(&f["local"]["ecs"]), labels("worker", "worker", "bridge"), "{f}");
    assert_eq!(f["local"]["ecs"]["container_id"], WORKER, "{f}");
    assert_eq!(who(&f["remote"]["ecs"]), labels("web", "web", "awsvpc"), "{f}");
    let s = closed(&agent, "the web server's flow", |f| {
        f["remote"]["port"] == worker_port
            && f["local"]["port"] == web_addr.port()
            && f["direction"] == "incoming"
    });
    assert_eq!(s["bytes_received"], 3000, "{s}");
    assert_eq!(who(&s["local"]["ecs"]), labels("web", "web", "awsvpc"), "{s}");
    assert_eq!(who(&s["remote"]["ecs"]), labels("worker", "worker", "bridge"), "{s}");

    // 2. A socket in the awsvpc namespace whose cgroup and process name no container (this test's
    //    thread): named by the namespace — the task's only application container.
    let port = awsvpc.run(move || {
        let mut c = TcpStream::connect(web_addr).expect("connect inside the task namespace");
        let port = c.local_addr().expect("addr").port();
        c.write_all(&[7u8; 77]).expect("send");
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        read_to_eof(&c);
        port
    });
    assert_eq!(web.line(), "77");
    let f = closed(&agent, "the namespace-named flow", |f| {
        f["local"]["port"] == port && f["remote"]["port"] == web_addr.port() && f["direction"] == "outgoing"
    });
    assert_eq!(who(&f["local"]["ecs"]), labels("web", "web", "awsvpc"), "named by its netns: {f}");
    assert_eq!(f["pid"], std::process::id(), "a process outside any container: {f}");

    // 3. host mode: the exporter shares the host namespace; its cgroup names it. Its peer (this test,
    //    outside any container) is the host.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let server = listener.local_addr().expect("addr");
    let sink = std::thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        let n = read_to_eof(&s);
        (&s).write_all(b"k").expect("reply");
        n
    });
    let mut exporter = Proc::start(
        None,
        &cgroups.procs(EXPORTER),
        CLIENT_PY,
        &[server.ip().to_string(), server.port().to_string(), "1234".into()],
    );
    let exporter_port: u16 = exporter.line().parse().expect("exporter port");
    assert_eq!(sink.join().expect("sink"), 1234);
    let f = closed(&agent, "the exporter's flow", |f| {
        // The whole tuple: another loopback connection may have used the same ephemeral port.
        f["local"]["port"] == exporter_port
            && f["remote"]["port"] == server.port()
            && f["direction"] == "outgoing"
    });
    assert_eq!(who(&f["local"]["ecs"]), labels("node-exporter", "exporter", "host"), "{f}");
    assert_eq!(f["local"]["ecs"]["task_revision"], "3", "{f}");
    assert_eq!(f["remote"]["ecs"]["container_name"], "host", "{f}");
    drop((worker, exporter, web));
}
