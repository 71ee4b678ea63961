//! Network namespaces, veth links, static neighbours and `tc netem`, all through the `ip`/`tc` commands.
//!
//! [`NetNs`] creates a uniquely named namespace (`eddy-<tag>-<pid>-<n>`), brings `lo` up and deletes it on drop.
//! Code runs inside a namespace on a dedicated thread that `setns(2)`s into `/run/netns/<name>` (setns of a
//! network namespace affects only the calling thread); sockets created there stay in that namespace wherever
//! they are used afterwards.

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A process-unique small number (used in namespace/interface names and subnets).
pub fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Runs a command; returns stdout, or an error with the command line and stderr.
pub fn try_cmd(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `{program} {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs a command and panics with its stderr when it fails.
pub fn cmd(program: &str, args: &[&str]) -> String {
    try_cmd(program, args).unwrap_or_else(|e| panic!("{e}"))
}

/// Inode of the network namespace of the calling thread (what the agent reports as `netns`).
pub fn current_netns_inode() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net").expect("stat /proc/thread-self/ns/net").ino()
}

/// cgroup v2 id (inode of the cgroup directory) of this process, when the unified hierarchy is mounted.
pub fn own_cgroup_id() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .filter(|root| {
            // Only a cgroup2 mount gives cgroup ids (on hybrid hosts /sys/fs/cgroup is a tmpfs of v1 mounts).
            nix::sys::statfs::statfs(**root)
                .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
                .unwrap_or(false)
        })
        .find_map(|root| std::fs::metadata(format!("{root}{path}")).ok())
        .map(|m| m.ino())
}

/// A network namespace made for one test; deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    inode: u64,
}

impl NetNs {
    /// Creates `eddy-<tag>-<pid>-<n>` and brings its loopback up.
    pub fn new(tag: &str) -> NetNs {
        let name = format!("eddy-{tag}-{}-{}", std::process::id(), next_id());
        cmd("ip", &["netns", "add", &name]);
        let inode = std::fs::metadata(format!("/run/netns/{name}"))
            .unwrap_or_else(|e| panic!("stat /run/netns/{name}: {e}"))
            .ino();
        let ns = NetNs { name, inode };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace inode number (the value the agent reports as `netns`).
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// `ip -n <ns> <args>`; panics on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        cmd("ip", &all)
    }

    /// `tc -n <ns> <args>`.
    pub fn tc(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        try_cmd("tc", &all)
    }

    /// Runs `f` on a new thread inside this namespace.
    pub fn spawn<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        std::thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns({path}): {e}"));
                drop(file);
                f()
            })
            .expect("spawn a thread")
    }

    /// Runs `f` inside this namespace and waits for it (a panic inside is re-raised here).
    pub fn run<F, T>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        join(self.spawn(f))
    }

    /// Adds a permanent neighbour entry: packets to `ip` leave through `dev` to a MAC nobody has (they vanish).
    pub fn add_black_hole_neighbour(&self, dev: &str, ip: &str) {
        self.ip(&["neigh", "add", ip, "lladdr", "02:00:00:00:00:01", "dev", dev, "nud", "permanent"]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = try_cmd("ip", &["netns", "del", &self.name]) {
            eprintln!("warning: {e}");
        }
    }
}

/// Joins a thread, re-raising its panic (with its original message) in the caller.
pub fn join<T>(handle: JoinHandle<T>) -> T {
    match handle.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A veth pair between two namespaces, with IPv4 (10.231.X.1|2/24) and IPv6 (fd00:e0d1::X:1|2/64) addresses.
#[derive(Debug, Clone)]
pub struct VethLink {
    /// Interface name on side A.
    pub a_if: String,
    /// Interface name on side B.
    pub b_if: String,
    /// The subnet number X (10.231.X.0/24).
    pub subnet: u8,
    pub a_v4: Ipv4Addr,
    pub b_v4: Ipv4Addr,
    pub a_v6: Ipv6Addr,
    pub b_v6: Ipv6Addr,
}

impl VethLink {
    /// An address of the link's IPv4 subnet that is assigned to nobody (host part `host`).
    pub fn unused_v4(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, host)
    }
}

/// A subnet number for 10.231.X.0/24, distinct within this process (and likely across concurrent processes).
pub fn next_subnet() -> u8 {
    let n = next_id() + std::process::id().wrapping_mul(7);
    (n % 250) as u8 + 1
}

/// Addresses for subnet X: (a_v4, b_v4, a_v6, b_v6).
pub fn subnet_addrs(x: u8) -> (Ipv4Addr, Ipv4Addr, Ipv6Addr, Ipv6Addr) {
    let x6 = u16::from(x);
    (
        Ipv4Addr::new(10, 231, x, 1),
        Ipv4Addr::new(10, 231, x, 2),
        Ipv6Addr::new(0xfd00, 0xe0d1, 0, 0, 0, 0, x6, 1),
        Ipv6Addr::new(0xfd00, 0xe0d1, 0, 0, 0, 0, x6, 2),
    )
}

/// Assigns the link's addresses to `dev` in `ns` and brings it up.
pub fn configure_addrs(ns: &NetNs, dev: &str, v4: Ipv4Addr, v6: Ipv6Addr) {
    ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]);
    ns.ip(&["-6", "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
    ns.ip(&["link", "set", dev, "up"]);
}

/// Creates a veth pair between `a` and `b`, addresses it and waits until both ends have carrier.
pub fn veth_link(a: &NetNs, b: &NetNs) -> VethLink {
    let id = next_id();
    let pid = std::process::id() % 100_000;
    let a_if = format!("e{pid}v{id}a");
    let b_if = format!("e{pid}v{id}b");
    let subnet = next_subnet();
    let (a_v4, b_v4, a_v6, b_v6) = subnet_addrs(subnet);
    cmd(
        "ip",
        &["link", "add", &a_if, "netns", a.name(), "type", "veth", "peer", "name", &b_if, "netns", b.name()],
    );
    configure_addrs(a, &a_if, a_v4, a_v6);
    configure_addrs(b, &b_if, b_v4, b_v6);
    for (ns, dev) in [(a, &a_if), (b, &b_if)] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = ns.ip(&["-o", "link", "show", "dev", dev]);
            if out.contains("LOWER_UP") {
                break;
            }
            assert!(Instant::now() < deadline, "{dev} in {} has no carrier after 5 s: {out}", ns.name());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    VethLink { a_if, b_if, subnet, a_v4, b_v4, a_v6, b_v6 }
}

/// `tc qdisc add dev <dev> root netem <params>` inside `ns`.
pub fn add_netem(ns: &NetNs, dev: &str, params: &str) -> Result<(), String> {
    let mut args = vec!["qdisc", "add", "dev", dev, "root", "netem"];
    args.extend(params.split_whitespace());
    ns.tc(&args).map(drop)
}

/// Whether `tc netem` works here (tried once on a veth in a throwaway namespace); the error says why not.
pub fn netem_available() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT
        .get_or_init(|| {
            let ns = NetNs::new("netemprobe");
            ns.ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"]);
            add_netem(&ns, "p0", "delay 1ms loss 1%")
        })
        .clone()
}
