//! The ECS agent introspection API (`/v1/metadata`, `/v1/tasks`) as a loopback fixture,
//! answering from the vendored samples in `tests/fixtures/ecs` (shaped exactly as AWS
//! documents them), or badly on demand (malformed JSON, HTTP 500, a 5 s stall).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

pub const GOOD: u8 = 0;
pub const MALFORMED: u8 = 1;
pub const ERROR_500: u8 = 2;
pub const STALL: u8 = 3;
/// A task list (a document with families; other routes answer as in [`GOOD`]): valid, naming other families (`"Family": "web"` → `"oversized"`), padded with
/// whitespace to [`OVERSIZED_BYTES`]: beyond every cap of the agent.
pub const OVERSIZED: u8 = 4;
/// Size of an [`OVERSIZED`] answer (64 MiB).
pub const OVERSIZED_BYTES: usize = 64 << 20;

/// A vendored fixture file of `tests/fixtures/ecs`.
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ecs").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Serves the introspection API on a loopback port; `mode` picks the behaviour per request.
pub fn introspection_fixture(mode: Arc<AtomicU8>) -> SocketAddr {
    introspection_fixture_with(mode, "introspection_v1_tasks.json")
}

/// [`introspection_fixture`] answering `/v1/tasks` from the fixture file `tasks_file`.
pub fn introspection_fixture_with(mode: Arc<AtomicU8>, tasks_file: &str) -> SocketAddr {
    json_fixture(
        mode,
        &[("/v1/metadata", fixture("introspection_v1_metadata.json")), ("/v1/tasks", fixture(tasks_file))],
    )
}

/// Task metadata v4 under `/v4/abc` (`/task`, `/task/stats`) from the Fargate fixtures.
pub fn task_metadata_fixture(mode: Arc<AtomicU8>) -> SocketAddr {
    json_fixture(
        mode,
        &[
            ("/v4/abc/task", fixture("tmds_v4_task_fargate.json")),
            ("/v4/abc/task/stats", fixture("tmds_v4_task_stats.json")),
        ],
    )
}

/// A metadata endpoint on a loopback port of the calling thread's network namespace: in
/// [`GOOD`] mode each route answers its JSON document (others 404); [`MALFORMED`] answers
/// half of the document, [`ERROR_500`] HTTP 500, [`STALL`] waits 5 s.
pub fn json_fixture(mode: Arc<AtomicU8>, routes: &[(&str, String)]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind fixture");
    let addr = listener.local_addr().expect("addr");
    let routes: Arc<HashMap<String, String>> =
        Arc::new(routes.iter().map(|(p, b)| (p.to_string(), b.clone())).collect());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (mode, routes) = (mode.clone(), routes.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    return;
                }
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = match (mode.load(Ordering::SeqCst), routes.get(path)) {
                    (GOOD, Some(doc)) => (200, doc.clone()),
                    (MALFORMED, Some(doc)) => (200, doc[..doc.len() / 2].to_string()),
                    (OVERSIZED, Some(doc)) if !doc.contains("\"Family\"") => (200, doc.clone()),
                    (OVERSIZED, Some(doc)) => {
                        let mut big = doc.replace("\"Family\": \"web\"", "\"Family\": \"oversized\"");
                        big.push_str(&" ".repeat(OVERSIZED_BYTES.saturating_sub(big.len())));
                        (200, big)
                    }
                    (ERROR_500, _) => (500, "{}".to_string()),
                    (STALL, _) => {
                        std::thread::sleep(Duration::from_secs(5));
                        (200, "{}".to_string())
                    }
                    _ => (404, String::new()),
                };
                let mut s = stream;
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

/// Task cgroups shaped like the ECS agent's (`<cgroup2 root>/ecs/<task-id>/<container-id>`),
/// removed on drop (after their processes exit).
pub struct EcsCgroups {
    dirs: Vec<PathBuf>,
}

impl EcsCgroups {
    /// Creates one directory per `(task id, container id)`.
    pub fn create(root: &Path, containers: &[(&str, &str)]) -> EcsCgroups {
        let mut dirs = Vec::new();
        for (task, container) in containers {
            let c = root.join("ecs").join(task).join(container);
            std::fs::create_dir_all(&c).unwrap_or_else(|e| panic!("mkdir {}: {e}", c.display()));
            dirs.push(c);
        }
        for (task, _) in containers {
            dirs.push(root.join("ecs").join(task));
        }
        dirs.push(root.join("ecs"));
        EcsCgroups { dirs }
    }

    /// [`EcsCgroups::create`] under `<root>/<parent>` (an "instance" of its own, removed last).
    pub fn create_under(root: &Path, parent: &str, containers: &[(&str, &str)]) -> EcsCgroups {
        let dir = root.join(parent);
        let mut c = EcsCgroups::create(&dir, containers);
        c.dirs.push(dir);
        c
    }

    /// `cgroup.procs` of a container's cgroup.
    pub fn procs(&self, container: &str) -> PathBuf {
        self.dirs
            .iter()
            .find(|d| d.ends_with(container))
            .unwrap_or_else(|| panic!("no cgroup for {container}"))
            .join("cgroup.procs")
    }
}

impl Drop for EcsCgroups {
    fn drop(&mut self) {
        for d in &self.dirs {
            // Processes may take a moment to leave after being killed.
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Starts `python3 -c script args...` inside the cgroup whose `cgroup.procs` is `procs`: the script
/// must first read one line of stdin (the process is moved before it opens any socket). Its
/// stdout is piped.
pub fn python_in_cgroup(procs: &Path, script: &str, args: &[String]) -> std::process::Child {
    python_in(procs, None, script, args)
}

/// [`python_in_cgroup`], in the named network namespace when `netns` is set (`ip netns exec`).
pub fn python_in(procs: &Path, netns: Option<&str>, script: &str, args: &[String]) -> std::process::Child {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns, "python3"]);
            c
        }
        None => std::process::Command::new("python3"),
    };
    let mut child = cmd
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (scripts/install-deps.sh installs it)");
    std::fs::write(procs, child.id().to_string()).expect("move the process into the container cgroup");
    child.stdin.take().expect("stdin").write_all(b"go\n").expect("start");
    child
}

/// The first line a child printed.
pub fn first_line(child: &mut std::process::Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("read a line");
    line.trim().to_string()
}

/// What the tests that put python3 "container" processes in cgroups need: root, a cgroup2 mount
/// (returned) and python3. `None` after printing why the test skips.
pub fn container_test_prerequisites() -> Option<PathBuf> {
    if !crate::require_privileges() {
        return None;
    }
    let Some(root) = cgroup2_root() else {
        crate::skip("no cgroup2 mount");
        return None;
    };
    if std::process::Command::new("python3").arg("-V").output().is_err() {
        crate::skip("python3 is needed for the container processes (scripts/install-deps.sh installs it)");
        return None;
    }
    Some(root)
}

/// The cgroup2 mount point (`/sys/fs/cgroup` or, on hybrid hosts, `/sys/fs/cgroup/unified`).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mountpoint = pre.split_whitespace().nth(4)?;
            (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mountpoint))
        })
        .collect();
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .find_map(|w| found.iter().find(|p| p.as_os_str() == *w).cloned())
        .or_else(|| found.first().cloned())
}
