//! Least privilege at run time: once its programs are loaded and attached, the real agent holds only
//! the capabilities its running parts use — in every thread: effective = permitted = bounding set,
//! no inheritable or ambient capabilities, `no_new_privs` set — and says so in `/status` and its log.
//! After the drop, the eBPF collector still counts an open connection's bytes exactly (the socket
//! iterator and the map reads run on every scan) and the closed connection's too.
//!
//! Expected sets (see agent/src/privileges.rs and the README's capability table): eBPF with conntrack
//! (the default) keeps CAP_NET_ADMIN, plus CAP_BPF where the kernel checks it on every `bpf()` command
//! (the test asks the kernel itself, as the agent does); sock_diag as root over every namespace keeps
//! CAP_SYS_PTRACE + CAP_SYS_ADMIN; an unprivileged agent keeps nothing and still sets `no_new_privs`.
//! With a used capability withheld on purpose (`EDDY_TEST_FAULTS=1` + `EDDY_TEST_WITHHOLD_CAPS`), what
//! it is kept for breaks: conntrack without CAP_NET_ADMIN, another namespace's connection without
//! CAP_SYS_PTRACE (its holder's `/proc/<pid>/ns/net` is unreadable) or CAP_SYS_ADMIN (no `setns`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use eddy_tests::*;
use serde_json::Value;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;
const UP: usize = 300_000;
const DOWN: usize = 70_000;
const NOBODY: u32 = 65534;

fn mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |m, c| m | 1 << c)
}

/// A `Cap*:` or `NoNewPrivs:` field of a `/proc/.../status` file.
fn field(status: &str, name: &str) -> u64 {
    let line =
        status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {status}"));
    let value = line.split_whitespace().nth(1).unwrap_or_default();
    if name == "NoNewPrivs:" {
        value.parse().unwrap_or_else(|e| panic!("{line}: {e}"))
    } else {
        u64::from_str_radix(value, 16).unwrap_or_else(|e| panic!("{line}: {e}"))
    }
}

/// Whether this kernel checks CAP_BPF / CAP_SYS_ADMIN on `bpf()` commands on open objects: a thread
/// without either asks for a map lookup on fd -1 (EPERM: checked before the fd; EBADF: not checked).
fn kernel_checks_bpf_commands() -> bool {
    std::thread::spawn(|| {
        let caps = caps::read_effective();
        caps::set_effective(caps & !mask(&[CAP_BPF, CAP_SYS_ADMIN]));
        let attr: [u64; 4] = [u64::from(u32::MAX), 0, 0, 0];
        // SAFETY: bpf(BPF_MAP_LOOKUP_ELEM) reads the 32-byte attribute buffer; fd -1 names no map.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, 1 as libc::c_long, attr.as_ptr(), 32usize) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert!(
            rc == -1 && (errno == Some(libc::EPERM) || errno == Some(libc::EBADF)),
            "bpf probe: {errno:?}"
        );
        errno == Some(libc::EPERM)
    })
    .join()
    .expect("probe thread")
}

/// The calling thread's effective set through capget/capset (version 3).
mod caps {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const V3: u32 = 0x2008_0522;

    fn get() -> [Data; 2] {
        let mut h = Header { version: V3, pid: 0 };
        let mut d = [Data::default(); 2];
        // SAFETY: capget writes two data structs (version 3) into `d`.
        let rc = unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut Header, d.as_mut_ptr()) };
        assert_eq!(rc, 0, "capget: {}", std::io::Error::last_os_error());
        d
    }

    pub fn read_effective() -> u64 {
        let d = get();
        u64::from(d[0].effective) | u64::from(d[1].effective) << 32
    }

    /// Lowers this thread's effective set (the permitted set stays).
    pub fn set_effective(eff: u64) {
        let mut d = get();
        (d[0].effective, d[1].effective) = (eff as u32, (eff >> 32) as u32);
        let mut h = Header { version: V3, pid: 0 };
        // SAFETY: capset reads the header and two initialised data structs (version 3).
        let rc = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()) };
        assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
    }
}

/// What the eBPF agent keeps besides conntrack's CAP_NET_ADMIN on this kernel.
fn bpf_caps() -> (Vec<u32>, Vec<&'static str>) {
    if kernel_checks_bpf_commands() { (vec![CAP_BPF], vec!["CAP_BPF"]) } else { (vec![], vec![]) }
}

/// The test's own permitted set: what the agent it starts can hold at most.
fn own_permitted() -> u64 {
    field(&std::fs::read_to_string("/proc/self/status").expect("own status"), "CapPrm:")
}

/// Every thread of `pid`: effective = permitted = bounding = `expected`, no inheritable or ambient
/// capabilities, `no_new_privs` set. Returns the number of threads checked.
fn assert_every_thread(pid: u32, expected: u64) -> usize {
    let dir = format!("/proc/{pid}/task");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {dir}: {e}")) {
        let path = entry.expect("task entry").path();
        let Ok(status) = std::fs::read_to_string(path.join("status")) else { continue };
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let what = format!("thread {} ({})", path.display(), comm.trim());
        for f in ["CapEff:", "CapPrm:", "CapBnd:"] {
            assert_eq!(field(&status, f), expected, "{what} {f} {:#x} != {expected:#x}", field(&status, f));
        }
        assert_eq!(field(&status, "CapInh:"), 0, "{what}");
        assert_eq!(field(&status, "CapAmb:"), 0, "{what}");
        assert_eq!(field(&status, "NoNewPrivs:"), 1, "{what}");
        n += 1;
    }
    assert!(n >= 3, "{dir}: only {n} threads (main, collector and async runtime expected)");
    n
}

/// `/status` → `privileges` names exactly `names` and says `no_new_privs`.
fn assert_status(agent: &RunAgent, names: &[&str]) -> Value {
    let status = agent.status();
    let p = &status["privileges"];
    let kept: Vec<&str> =
        p["capabilities"].as_array().into_iter().flatten().filter_map(|k| k["name"].as_str()).collect();
    assert_eq!(kept, names, "{p}");
    assert!(
        p["capabilities"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|k| k["used_for"].as_str().is_some_and(|s| !s.is_empty())),
        "{p}"
    );
    assert_eq!(p["no_new_privs"], true, "{p}");
    assert_eq!(
        agent.log_lines_with("capabilities dropped to what the running agent uses").len(),
        1,
        "{}",
        agent.log_tail(30)
    );
    p.clone()
}

/// The agent's record of `local` → `remote` with these bytes (open or closed), within 10 s.
fn wait_exact(
    agent: &RunAgent,
    local: SocketAddr,
    remote: SocketAddr,
    sent: u64,
    received: u64,
    closed: bool,
) {
    poll_until(Duration::from_secs(10), Duration::from_millis(200), "exact bytes after the drop", || {
        // A busy machine may answer one poll with an error: the next poll retries (the last one is shown).
        let r = agent.get("/flows?limit=100000");
        if r.status != 200 {
            eprintln!("GET /flows: HTTP {} {} (retrying)", r.status, r.text());
            return Err(format!("GET /flows: HTTP {} {}", r.status, r.text()));
        }
        let flows: Vec<FlowRecord> = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
        let found: Vec<&FlowRecord> =
            flows.iter().filter(|f| f.is("tcp", local, remote) && f.closed_at.is_some() == closed).collect();
        match found.as_slice() {
            [f] if f.bytes_sent == sent && f.bytes_received == received => Ok(()),
            _ => Err(describe_records(&flows, &[local, remote])),
        }
    });
}

#[test]
fn ebpf_agent_keeps_what_it_uses_in_every_thread_and_counts_exact_bytes() {
    if !require_privileges() {
        return;
    }
    let (bpf, bpf_names) = bpf_caps();
    let expected = mask(&[CAP_NET_ADMIN]) | mask(&bpf);
    if own_permitted() & (expected | mask(&[CAP_BPF])) != expected | mask(&[CAP_BPF]) {
        return skip("the test process does not hold CAP_BPF and CAP_NET_ADMIN");
    }
    let client_ns = NetNs::new("priv-c");
    let server_ns = NetNs::new("priv-s");
    let link = veth_link(&client_ns, &server_ns);
    let agent = RunAgent::start(&["--collector", "ebpf", "--poll-interval", "200ms"]);
    let pid = agent.pid().expect("running");
    let threads = assert_every_thread(pid, expected);
    eprintln!("{threads} threads hold exactly {expected:#x} (CAP_NET_ADMIN {bpf_names:?}), no_new_privs");
    let mut names = vec!["CAP_NET_ADMIN"];
    names.extend(&bpf_names);
    let p = assert_status(&agent, &names);
    assert_eq!(p["bounding_set_reduced"], true, "{p}");
    assert_eq!(
        p["bpf_needs_capability"],
        !bpf.is_empty(),
        "the agent's probe disagrees with the test's: {p}"
    );
    let dropped: Vec<&str> =
        p["dropped"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    for gone in ["CAP_SYS_ADMIN", "CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_DAC_OVERRIDE", "CAP_SETUID"] {
        assert!(dropped.contains(&gone), "{gone} not dropped: {p}");
    }
    // conntrack works with what was kept.
    poll_until(Duration::from_secs(5), Duration::from_millis(100), "conntrack on", || {
        let c = agent.status()["conntrack"].clone();
        if c["state"] == "on" { Ok(()) } else { Err(c.to_string()) }
    });

    // A connection between two namespaces, open across scans: live bytes come from the socket
    // iterator, run after the drop.
    let server_ip = link.b_v4;
    let listener = server_ns.run(move || TcpListener::bind((server_ip, 0)).expect("bind"));
    let server_addr = listener.local_addr().expect("addr");
    let mut client = client_ns.run(move || TcpStream::connect(server_addr).expect("connect"));
    let (mut server, client_addr) = listener.accept().expect("accept");
    client.write_all(&payload(UP, 1)).expect("write up");
    let mut buf = vec![0u8; UP.max(DOWN)];
    server.read_exact(&mut buf[..UP]).expect("read up");
    server.write_all(&payload(DOWN, 2)).expect("write down");
    client.read_exact(&mut buf[..DOWN]).expect("read down");
    let (up, down) = (UP as u64, DOWN as u64);
    wait_exact(&agent, client_addr, server_addr, up, down, false);
    wait_exact(&agent, server_addr, client_addr, down, up, false);

    drop(client);
    drop(server);
    wait_exact(&agent, client_addr, server_addr, up, down, true);
    wait_exact(&agent, server_addr, client_addr, down, up, true);
    // Still exactly the same sets after scans, conntrack and the connection's life.
    assert_every_thread(pid, expected);
}

#[test]
fn without_conntrack_only_what_bpf_needs_is_kept() {
    if !require_privileges() {
        return;
    }
    let (bpf, names) = bpf_caps();
    let agent = RunAgent::start(&["--collector", "ebpf", "--conntrack", "false"]);
    assert_every_thread(agent.pid().expect("running"), mask(&bpf));
    assert_status(&agent, &names);
}

#[test]
fn withheld_net_admin_leaves_conntrack_unavailable() {
    if !require_privileges() {
        return;
    }
    let opts = RunOptions {
        env: vec![
            ("EDDY_TEST_FAULTS".into(), "1".into()),
            ("EDDY_TEST_WITHHOLD_CAPS".into(), "CAP_NET_ADMIN".into()),
        ],
        ..Default::default()
    };
    let agent = RunAgent::start_with(&["--collector", "ebpf"], &opts);
    assert_status(&agent, &bpf_caps().1);
    let c = poll_until(Duration::from_secs(5), Duration::from_millis(100), "conntrack unavailable", || {
        let c = agent.status()["conntrack"].clone();
        if c["state"] == "unavailable" { Ok(c) } else { Err(c.to_string()) }
    });
    assert!(c["reason"].as_str().is_some_and(|r| r.contains("Operation not permitted")), "{c}");
}

/// A process that holds `ns` (so that the sock_diag walk of `/proc` finds it); killed on drop.
struct Holder(std::process::Child);

impl Holder {
    fn start(ns: &NetNs) -> Holder {
        let child = ns.run(|| {
            std::process::Command::new("sleep").arg("600").spawn().expect("spawn a namespace holder")
        });
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A root sock_diag agent (every namespace, no conntrack), with `withheld` capabilities given up, and
/// a connection inside a namespace held by a process of the test: (agent, namespace inode, client and
/// server addresses, the sockets).
fn sock_diag_agent_and_connection(withheld: &str) -> (RunAgent, NetNs, Holder, [TcpStream; 2]) {
    let ns = NetNs::new("priv-sd");
    let holder = Holder::start(&ns);
    let (mut client, mut server) = ns.run(|| {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        // The listener stays open: sock_diag tells incoming from outgoing by the listening sockets.
        std::mem::forget(l);
        (c, s)
    });
    client.write_all(&payload(UP, 1)).expect("write up");
    let mut buf = vec![0u8; UP.max(DOWN)];
    server.read_exact(&mut buf[..UP]).expect("read up");
    server.write_all(&payload(DOWN, 2)).expect("write down");
    client.read_exact(&mut buf[..DOWN]).expect("read down");
    let mut env = Vec::new();
    if !withheld.is_empty() {
        env = vec![
            ("EDDY_TEST_FAULTS".into(), "1".into()),
            ("EDDY_TEST_WITHHOLD_CAPS".into(), withheld.into()),
        ];
    }
    let opts = RunOptions { env, ..Default::default() };
    let agent = RunAgent::start_with(
        &["--collector", "sock_diag", "--conntrack", "false", "--poll-interval", "200ms"],
        &opts,
    );
    let status = agent.status();
    assert_eq!(status["collector"], "sock_diag", "{status}");
    assert!(
        status["collector_limits"].as_str().unwrap_or_default().contains("every network namespace"),
        "{status}"
    );
    (agent, ns, holder, [client, server])
}

#[test]
fn sock_diag_as_root_keeps_ptrace_and_setns_and_sees_other_namespaces() {
    if !require_privileges() {
        return;
    }
    let expected = mask(&[CAP_SYS_PTRACE, CAP_SYS_ADMIN]);
    if own_permitted() & expected != expected {
        return skip("the test process does not hold CAP_SYS_ADMIN and CAP_SYS_PTRACE");
    }
    let (agent, ns, _holder, [client, server]) = sock_diag_agent_and_connection("");
    assert_every_thread(agent.pid().expect("running"), expected);
    assert_status(&agent, &["CAP_SYS_PTRACE", "CAP_SYS_ADMIN"]);
    let (c, s) = (client.local_addr().expect("addr"), server.local_addr().expect("addr"));
    wait_exact(&agent, c, s, UP as u64, DOWN as u64, false);
    wait_exact(&agent, s, c, DOWN as u64, UP as u64, false);
    let flows = agent.flows();
    let rec = flows.iter().find(|f| f.is("tcp", c, s)).expect("record");
    assert_eq!(rec.netns, Some(ns.inode()), "{}", rec.summary());
}

/// With `withheld` given up, the namespace's connection is never reported and `drop` counts why.
fn namespace_lost_without(withheld: &str, drop: &str) {
    if !require_privileges() {
        return;
    }
    let (agent, _ns, _holder, [client, server]) = sock_diag_agent_and_connection(withheld);
    let drops = poll_until(Duration::from_secs(5), Duration::from_millis(100), drop, || {
        let d = agent.status()["drops"].clone();
        if d[drop].as_u64() > Some(0) { Ok(d) } else { Err(d.to_string()) }
    });
    std::thread::sleep(Duration::from_millis(600));
    let (c, s) = (client.local_addr().expect("addr"), server.local_addr().expect("addr"));
    let flows = agent.flows();
    assert!(
        !flows.iter().any(|f| f.is("tcp", c, s) || f.is("tcp", s, c)),
        "seen without {withheld}: {}; drops {drops}",
        describe_records(&flows, &[c, s])
    );
}

#[test]
fn withheld_sys_ptrace_hides_other_namespaces() {
    namespace_lost_without("CAP_SYS_PTRACE", "namespace_links_unreadable");
}

#[test]
fn withheld_sys_admin_cannot_enter_other_namespaces() {
    namespace_lost_without("CAP_SYS_ADMIN", "namespace_enter_failed");
}

#[test]
fn unprivileged_agent_keeps_nothing_and_sets_no_new_privs() {
    if !nix::unistd::geteuid().is_root() {
        return skip("needs root to run the agent as nobody");
    }
    let copy = unprivileged_copy("privileges");
    let opts = RunOptions { uid: Some(NOBODY), bin: Some(copy.0.clone()), ..Default::default() };
    let agent = RunAgent::start_with(&["--collector", "sock_diag"], &opts);
    let pid = agent.pid().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_default();
    assert_eq!(uid.split_whitespace().nth(2), Some("65534"), "{uid}");
    let dir = format!("/proc/{pid}/task");
    for entry in std::fs::read_dir(&dir).expect("tasks") {
        let s = std::fs::read_to_string(entry.expect("task").path().join("status")).unwrap_or_default();
        if s.is_empty() {
            continue;
        }
        for f in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
            assert_eq!(field(&s, f), 0, "{f}: {s}");
        }
        assert_eq!(field(&s, "NoNewPrivs:"), 1, "{s}");
    }
    let p = assert_status(&agent, &[]);
    assert_eq!(p["dropped"], serde_json::json!([]), "{p}");
    assert_eq!(p["bounding_set_reduced"], false, "{p}");
}
