//! The local ECS provider walks the cgroup tree every refresh interval and, when a lookup meets a
//! cgroup id it has not seen, once more soon after (a new container). A socket whose cgroup was
//! removed keeps an id that no walk can find: it must not make the agent walk the tree again and
//! again (before the fix: one walk per poll, up to 10 a second). A container created after start
//! is still named within a poll or two.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::Duration;

use eddy_tests::ecs_fixture::*;
use eddy_tests::*;
use serde_json::Value;

/// A Docker-shaped container id only this test uses.
const CONTAINER: &str = "5e1f2a3b4c5d6e7f5e1f2a3b4c5d6e7f5e1f2a3b4c5d6e7f5e1f2a3b4c5d6e7f";

/// Directories removed (deepest first) on drop.
struct Dirs(Vec<PathBuf>);

impl Drop for Dirs {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// python3 that creates a socket in cgroup `dir` (a socket keeps the cgroup it was created in),
/// then runs `between`, then connects to `port`, sends 100 bytes and holds the connection until
/// stdin closes. Returns the process and its local port.
fn client_in(dir: &Path, port: u16, between: impl FnOnce(&Child)) -> (Child, u16) {
    let script = "import socket,sys\nsys.stdin.readline()\ns=socket.socket()\nprint('made',flush=True)\n\
                  sys.stdin.readline()\ns.connect(('127.0.0.1',int(sys.argv[1])))\n\
                  print(s.getsockname()[1],flush=True)\ns.sendall(b'x'*100)\nsys.stdin.read()\n";
    let mut child = Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).expect("move into the cgroup");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    child.stdin.as_mut().expect("stdin").write_all(b"go\n").expect("create");
    out.read_line(&mut line).expect("made");
    between(&child);
    child.stdin.as_mut().expect("stdin").write_all(b"go\n").expect("connect");
    line.clear();
    out.read_line(&mut line).expect("port");
    (child, line.trim().parse().expect("local port"))
}

fn ecs(agent: &RunAgent) -> Value {
    agent.status()["ecs"].clone()
}

fn live_flow(agent: &RunAgent, port: u16) -> Result<Value, String> {
    let flows: Vec<Value> = serde_json::from_str(&agent.get("/flows").text()).map_err(|e| e.to_string())?;
    flows
        .into_iter()
        .find(|f| f["local"]["port"] == port && f["direction"] == "outgoing")
        .ok_or_else(|| format!("no flow from port {port} yet"))
}

#[test]
fn an_id_no_walk_can_find_does_not_make_the_agent_walk_again_and_again() {
    let Some(root) = container_test_prerequisites() else { return };
    let fixture = introspection_fixture(Arc::new(AtomicU8::new(GOOD)));
    let agent = RunAgent::start(&[
        "--poll-interval",
        "200ms",
        "--ecs-agent-uri",
        &format!("http://{fixture}"),
        // Periodic walks every 2 s (the iterator can see the socket before its cgroup is removed,
        // so a walk may still find the id once).
        "--ecs-refresh-interval",
        "2s",
    ]);
    poll_until(Duration::from_secs(10), Duration::from_millis(200), "a first walk", || {
        if ecs(&agent)["cgroup_walks"].as_u64().unwrap_or(0) >= 1 { Ok(()) } else { Err("none".into()) }
    });
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();

    // 1. A connection made in a cgroup that is then removed: its socket keeps the dead id.
    let base = root.join(format!("eddy-walks-{}", std::process::id()));
    let gone = base.join("gone");
    std::fs::create_dir_all(&gone).expect("mkdir");
    let dirs =
        Dirs(vec![base.join("docker").join(CONTAINER), base.join("docker"), gone.clone(), base.clone()]);
    let (mut orphan, orphan_port) = client_in(&gone, port, |child| {
        std::fs::write(root.join("cgroup.procs"), child.id().to_string())
            .expect("move back to the root cgroup");
        std::fs::remove_dir(&gone).expect("rmdir the emptied cgroup");
    });
    let (_accepted, _) = listener.accept().expect("accept");
    poll_until(
        Duration::from_secs(10),
        Duration::from_millis(200),
        "the orphan's id missed and walked for",
        || {
            let e = ecs(&agent);
            let (misses, unresolved) = (
                e["cgroup_misses"]["lookups"].as_u64().unwrap_or(0),
                e["cgroup_misses"]["unresolved"].as_u64().unwrap_or(0),
            );
            if misses >= 1 && unresolved >= 1 { Ok(()) } else { Err(format!("{e}")) }
        },
    );
    let f = live_flow(&agent, orphan_port).expect("the orphan's flow");
    assert_eq!(f["local"]["ecs"]["container_name"], "unknown", "{f}");
    let before = ecs(&agent);
    std::thread::sleep(Duration::from_secs(3));
    let after = ecs(&agent);
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    let lookups = n(&after["cgroup_misses"], "lookups") - n(&before["cgroup_misses"], "lookups");
    assert!(lookups >= 5, "the live flow is looked up every poll: {lookups} lookups in 3 s\n{after}");
    assert_eq!(
        n(&after, "cgroup_walks_on_miss"),
        n(&before, "cgroup_walks_on_miss"),
        "no walk for an id a walk already missed ({lookups} lookups in 3 s)\n{after}"
    );
    let metrics = agent.get("/metrics").text();
    assert!(metrics.lines().any(|l| l.starts_with("eddy_agent_cgroup_unresolved ")), "{metrics}");

    // 2. A container created after start is still found by a walk on its first miss.
    let container = &dirs.0[0];
    std::fs::create_dir_all(container).expect("mkdir container");
    let (mut named, named_port) = client_in(container, port, |_| ());
    let (_accepted2, _) = listener.accept().expect("accept");
    let f = poll_until(Duration::from_secs(5), Duration::from_millis(200), "the new container named", || {
        let f = live_flow(&agent, named_port)?;
        if f["local"]["ecs"]["container_id"] == CONTAINER { Ok(f) } else { Err(format!("{f}")) }
    });
    assert_eq!(f["bytes_sent"], 100, "{f}");
    assert!(n(&ecs(&agent), "cgroup_walks_on_miss") > n(&after, "cgroup_walks_on_miss"));

    for child in [&mut orphan, &mut named] {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    drop(dirs);
}
