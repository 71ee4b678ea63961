//! "Containers" in the guest, as the ECS agent lays them out: cgroup directories shaped like the ECS
//! agent's (cgroup v2 on AL2023: `ecstasks.slice/ecstasks-<task>.slice/docker-<id>.scope`; cgroup v1 on
//! the ECS AL2 AMI and Bottlerocket aws-ecs-1: `<controller>/ecs/<task>/<id>` in every hierarchy), and
//! processes in them: children of this driver (`eddy-matrix-guest child ROLE ...`) that enter their
//! cgroups before `exec` (so every socket they create belongs there), optionally in a network namespace
//! of their own or of another container (awsvpc: the pause container holds it, the app joins it).
//!
//! The child protocol is line based: a child prints `ready [address]` once set up, clients wait for `go`
//! on stdin, and every role ends with `result {json}` (addresses, socket cookie, bytes received).

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use eddy_tests::{payload, socket_cookie, tcp_exchange};
use serde_json::{Value, json};

/// One ECS container of the introspection fixture (`introspection_v1_tasks_layouts.json`).
#[derive(Clone, Copy, Debug)]
pub struct Container {
    pub task: &'static str,
    pub id: &'static str,
    pub name: &'static str,
    pub family: &'static str,
    pub revision: &'static str,
    pub network_mode: &'static str,
}

impl Container {
    pub fn task_arn(&self) -> String {
        format!("arn:aws:ecs:us-east-1:123456789012:task/{CLUSTER}/{}", self.task)
    }

    /// What the agent must put in `local.ecs` / `remote.ecs` for this container: `(field, value)`.
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        vec![
            ("cluster", CLUSTER.to_string()),
            ("task_arn", self.task_arn()),
            ("task_family", self.family.to_string()),
            ("task_revision", self.revision.to_string()),
            ("container_name", self.name.to_string()),
            ("container_id", self.id.to_string()),
            ("launch_type", "EC2".to_string()),
            ("network_mode", self.network_mode.to_string()),
        ]
    }
}

pub const CLUSTER: &str = "flows";
const WEB_TASK: &str = "4b5c6d7e8f9041a2b3c4d5e6f7a8b9c0";
pub const PAUSE: Container = Container {
    task: WEB_TASK,
    id: "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a7988",
    name: "~internal~ecs~pause",
    family: "web",
    revision: "7",
    network_mode: "awsvpc",
};
pub const WEB: Container = Container {
    task: WEB_TASK,
    id: "9a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f3021",
    name: "web",
    family: "web",
    revision: "7",
    network_mode: "awsvpc",
};
pub const WORKER: Container = Container {
    task: "11112222333344445555666677778888",
    id: "abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd",
    name: "worker",
    family: "worker",
    revision: "12",
    network_mode: "bridge",
};
pub const EXPORTER: Container = Container {
    task: "99990000aaaabbbbccccddddeeeeffff",
    id: "5555666677778888999900001111222233334444555566667777888899990000",
    name: "exporter",
    family: "node-exporter",
    revision: "3",
    network_mode: "host",
};
/// Containers the fixture lists (pause, web, worker, exporter).
pub const FIXTURE_CONTAINERS: u64 = 4;

/// The ECS agent's answers, built into the binary (the guest has no source tree).
pub const INTROSPECTION_METADATA: &str = include_str!("../../../fixtures/ecs/introspection_v1_metadata.json");
pub const INTROSPECTION_TASKS: &str =
    include_str!("../../../fixtures/ecs/introspection_v1_tasks_layouts.json");

/// Mount points of the mounted filesystems of type `fstype` (`cgroup`, `cgroup2`).
pub fn mounts_of(fstype: &str) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mountpoint = pre.split_whitespace().nth(4)?;
            (post.split_whitespace().next()? == fstype).then(|| PathBuf::from(mountpoint))
        })
        .collect()
}

/// Container cgroup directories; removed (deepest first) on drop, after their processes are gone.
pub struct Cgroups {
    /// Every directory created, parents before children.
    created: Vec<PathBuf>,
    /// Per container id: the `cgroup.procs` files it enters (one per hierarchy).
    procs: Vec<(&'static str, Vec<PathBuf>)>,
}

impl Cgroups {
    /// cgroup v2 as the ECS agent creates it with the systemd driver (AL2023):
    /// `<root>/ecstasks.slice/ecstasks-<task>.slice/docker-<id>.scope`.
    pub fn v2(root: &Path, containers: &[Container]) -> Result<Cgroups> {
        let mut cg = Cgroups { created: Vec::new(), procs: Vec::new() };
        for c in containers {
            let rel = format!("ecstasks.slice/ecstasks-{}.slice/docker-{}.scope", c.task, c.id);
            let leaf = cg.mkdirs(root, &rel, false)?;
            cg.procs.push((c.id, vec![leaf.join("cgroup.procs")]));
        }
        Ok(cg)
    }

    /// cgroup v1 as on the ECS AL2 AMI: `<hierarchy>/ecs/<task>/<id>` in every mounted v1 hierarchy.
    pub fn v1(hierarchies: &[PathBuf], containers: &[Container]) -> Result<Cgroups> {
        let mut cg = Cgroups { created: Vec::new(), procs: Vec::new() };
        for c in containers {
            let mut files = Vec::new();
            for h in hierarchies {
                let cpuset = h.join("cpuset.cpus").exists();
                let leaf = cg.mkdirs(h, &format!("ecs/{}/{}", c.task, c.id), cpuset)?;
                files.push(leaf.join("cgroup.procs"));
            }
            cg.procs.push((c.id, files));
        }
        Ok(cg)
    }

    /// Creates `rel` under `root` level by level (v1 cpuset: each level gets its parent's CPUs and
    /// memory nodes, without which it accepts no process); returns the leaf.
    fn mkdirs(&mut self, root: &Path, rel: &str, cpuset: bool) -> Result<PathBuf> {
        let mut dir = root.to_path_buf();
        for part in rel.split('/') {
            let parent = dir.clone();
            dir = dir.join(part);
            if dir.exists() {
                continue;
            }
            std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            self.created.push(dir.clone());
            if cpuset {
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let v = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                    std::fs::write(dir.join(f), v.trim())
                        .with_context(|| format!("write {}", dir.join(f).display()))?;
                }
            }
        }
        Ok(dir)
    }

    /// Directories created (for `/status` → `ecs.cgroups` bookkeeping).
    pub fn created(&self) -> usize {
        self.created.len()
    }

    fn procs_of(&self, c: &Container) -> Vec<PathBuf> {
        self.procs.iter().find(|(id, _)| *id == c.id).map(|(_, f)| f.clone()).unwrap_or_default()
    }

    /// Inode (= cgroup id) of container `c`'s directory in its first hierarchy (the cgroup2 one for
    /// [`Cgroups::v2`]).
    pub fn cgroup_id(&self, c: &Container) -> Option<u64> {
        use std::os::unix::fs::MetadataExt as _;
        let dir = self.procs_of(c).into_iter().next()?.parent()?.to_path_buf();
        std::fs::metadata(dir).map(|m| m.ino()).ok()
    }

    /// Starts `eddy-matrix-guest child <args>` inside container `c`'s cgroups.
    pub fn spawn(&self, c: &Container, args: &[String]) -> Result<Proc> {
        Proc::spawn(c, &self.procs_of(c), args)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for d in self.created.iter().rev() {
            for _ in 0..100 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A child process in a container; killed on drop.
pub struct Proc {
    pub container: Container,
    pub pid: u32,
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
    /// `ready` line's argument (the bound address of servers).
    pub ready: String,
}

impl Proc {
    fn spawn(c: &Container, procs: &[PathBuf], args: &[String]) -> Result<Proc> {
        let exe = std::env::current_exe().context("current_exe")?;
        let files: Vec<CString> = procs
            .iter()
            .map(|p| CString::new(p.as_os_str().as_encoded_bytes()).context("cgroup.procs path"))
            .collect::<Result<_>>()?;
        let mut cmd = Command::new(&exe);
        cmd.arg("child").args(args).stdin(Stdio::piped()).stdout(Stdio::piped());
        // SAFETY: between fork and exec only async-signal-safe calls (open, write, close) on buffers
        // prepared before the fork. Writing "0" to cgroup.procs moves the writing process (v1 and v2), so
        // the program starts in its container and every socket it opens belongs there.
        unsafe {
            cmd.pre_exec(move || {
                for f in &files {
                    let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let err = std::io::Error::last_os_error();
                    libc::close(fd);
                    if n != 1 {
                        return Err(err);
                    }
                }
                Ok(())
            });
        }
        let mut child =
            cmd.spawn().with_context(|| format!("spawn child {} in {}", args.join(" "), c.name))?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().context("child stdout")?);
        let mut p = Proc { container: *c, pid, child, stdin, out, ready: String::new() };
        let line = p.line()?;
        match line.strip_prefix("ready") {
            Some(rest) => p.ready = rest.trim().to_string(),
            None => bail!("child {} ({}): expected `ready`, got {line:?}", args.join(" "), c.name),
        }
        Ok(p)
    }

    fn line(&mut self) -> Result<String> {
        let mut l = String::new();
        self.out.read_line(&mut l).context("read the child's stdout")?;
        if l.is_empty() {
            let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
            bail!("child {} (pid {}) exited ({status}) without a line", self.container.name, self.pid);
        }
        Ok(l.trim().to_string())
    }

    /// Releases a client.
    pub fn go(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("child stdin")?;
        stdin.write_all(b"go\n").context("write go")?;
        Ok(())
    }

    /// The `result {json}` line.
    pub fn result(&mut self) -> Result<Value> {
        let line = self.line()?;
        let json =
            line.strip_prefix("result ").with_context(|| format!("expected `result`, got {line:?}"))?;
        serde_json::from_str(json).with_context(|| format!("child result {json:?}"))
    }

    /// The child's `/proc/<pid>/cgroup` (evidence).
    pub fn cgroup_file(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid)).unwrap_or_else(|e| format!("({e})"))
    }

    /// Inode of the child's network namespace.
    pub fn netns(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(format!("/proc/{}/ns/net", self.pid)).map(|m| m.ino()).ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Enters the network namespace `path` (`/proc/<pid>/ns/net`) on the calling thread.
pub fn enter_netns(path: &str) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("open {path}"))?;
    use std::os::fd::AsRawFd as _;
    // SAFETY: setns(2) on a descriptor we own; it changes only this thread's network namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn wait_go() -> Result<()> {
    let mut l = String::new();
    std::io::stdin().read_line(&mut l).context("read go")?;
    if l.trim() != "go" {
        bail!("expected go, got {l:?}");
    }
    Ok(())
}

fn arg<'a>(args: &'a [String], i: usize, what: &str) -> Result<&'a str> {
    args.get(i).map(String::as_str).with_context(|| format!("missing {what}"))
}

/// `eddy-matrix-guest child [--unshare-net | --netns PATH] ROLE ...` (started by [`Cgroups::spawn`]):
/// - `hold`: prints `ready`, waits for stdin to close (the awsvpc pause container);
/// - `tcp-server ADDR SEND`: listens, prints `ready ADDR`, accepts one connection, writes SEND bytes and
///   reads to EOF ([`tcp_exchange`]), prints the result;
/// - `tcp-client SERVER SEND`: after `go`, connects and does the same;
/// - `udp-echo ADDR COUNT`: binds, prints `ready ADDR`, echoes COUNT datagrams;
/// - `udp-client SERVER SIZE,SIZE...`: after `go`, sends each size from a connected socket and reads
///   the echo.
pub fn child_main(args: &[String]) -> Result<bool> {
    let mut rest = args;
    loop {
        match rest.first().map(String::as_str) {
            Some("--unshare-net") => {
                // SAFETY: unshare(2) at start-up, before any thread exists.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    bail!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
                }
                let st = Command::new("ip").args(["link", "set", "lo", "up"]).status().context("ip link")?;
                if !st.success() {
                    bail!("ip link set lo up: {st}");
                }
                rest = &rest[1..];
            }
            Some("--netns") => {
                enter_netns(arg(rest, 1, "--netns PATH")?)?;
                rest = &rest[2..];
            }
            _ => break,
        }
    }
    let role = arg(rest, 0, "role")?;
    let timeout = Some(Duration::from_secs(60));
    let result = match role {
        "hold" => {
            println!("ready");
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            return Ok(true);
        }
        "tcp-server" => {
            let addr: SocketAddr = arg(rest, 1, "ADDR")?.parse().context("ADDR")?;
            let send: usize = arg(rest, 2, "SEND")?.parse().context("SEND")?;
            let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
            println!("ready {}", listener.local_addr()?);
            let (stream, peer) = listener.accept().context("accept")?;
            stream.set_read_timeout(timeout)?;
            let cookie = socket_cookie(&stream);
            let ex = tcp_exchange(stream, send);
            json!({"peer": peer.to_string(), "cookie": cookie, "received": ex.received})
        }
        "tcp-client" => {
            let server: SocketAddr = arg(rest, 1, "SERVER")?.parse().context("SERVER")?;
            let send: usize = arg(rest, 2, "SEND")?.parse().context("SEND")?;
            println!("ready");
            wait_go()?;
            let stream = TcpStream::connect(server).with_context(|| format!("connect {server}"))?;
            stream.set_read_timeout(timeout)?;
            let local = stream.local_addr()?;
            let cookie = socket_cookie(&stream);
            let ex = tcp_exchange(stream, send);
            json!({"local": local.to_string(), "cookie": cookie, "received": ex.received})
        }
        "udp-echo" => {
            let addr: SocketAddr = arg(rest, 1, "ADDR")?.parse().context("ADDR")?;
            let count: usize = arg(rest, 2, "COUNT")?.parse().context("COUNT")?;
            let s = UdpSocket::bind(addr).with_context(|| format!("bind {addr}"))?;
            s.set_read_timeout(timeout)?;
            println!("ready {}", s.local_addr()?);
            let mut buf = vec![0u8; 2048];
            let mut peers = Vec::new();
            for i in 0..count {
                let (n, peer) = s.recv_from(&mut buf).with_context(|| format!("datagram {i} of {count}"))?;
                s.send_to(&buf[..n], peer).context("echo")?;
                peers.push(peer.to_string());
            }
            json!({"cookie": socket_cookie(&s), "peers": peers})
        }
        "udp-client" => {
            let server: SocketAddr = arg(rest, 1, "SERVER")?.parse().context("SERVER")?;
            let sizes: Vec<usize> = arg(rest, 2, "SIZES")?
                .split(',')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .context("SIZES")?;
            println!("ready");
            wait_go()?;
            let s = UdpSocket::bind(SocketAddr::new(server.ip(), 0)).context("bind")?;
            s.connect(server).context("connect")?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut buf = vec![0u8; 2048];
            for &size in &sizes {
                s.send(&payload(size, 4)).context("send")?;
                let n = s.recv(&mut buf).with_context(|| format!("echo of {size} B"))?;
                if n != size {
                    bail!("echo of {size} B came back with {n} B");
                }
            }
            json!({"local": s.local_addr()?.to_string(), "cookie": socket_cookie(&s)})
        }
        other => bail!("unknown child role {other:?}"),
    };
    println!("result {result}");
    Ok(true)
}
