//! ECS identity of local and remote ends, with real processes in ECS-shaped cgroups and the ECS agent's
//! introspection API served by the driver on loopback (the fixture of `tests/fixtures/ecs`, as AWS
//! documents `/v1/metadata` and `/v1/tasks`; the agent runs with `--ecs-agent-uri` pointing at it).
//!
//! - `ecs_cgroup_v2` (the normal boot, cgroup2 at /sys/fs/cgroup): `worker` (bridge task) connects to
//!   `web` (awsvpc task) over TCP and exchanges UDP datagrams; the agent names both ends from the
//!   sockets' cgroup v2 ids (`ecstasks.slice/ecstasks-<task>.slice/docker-<id>.scope`).
//! - `ecs_cgroup_v1` (the `eddy.cgroup=v1` boot: v1 hierarchies only, no cgroup2 mounted by anyone): the
//!   agent must mount its own cgroup2 (`/status` → `kernel.cgroup2_mounted_by_agent`), name containers
//!   from `/proc/<pid>/cgroup` (`worker` → `exporter`, host network mode, the shared namespace), and from
//!   the network namespace for sockets of a process no cgroup names: a driver thread inside the awsvpc
//!   task's namespace (held by the pause container, joined by `web`) talks TCP and UDP to `web`.
//!
//! Every record must carry exact bytes (and datagrams), `local.ecs` of its container and `remote.ecs` of
//! the peer (intra-host peers).

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::{Duration, Instant};

use eddy_tests::ecs_fixture::{GOOD, json_fixture};
use eddy_tests::{FlowRecord, payload, socket_cookie, tcp_exchange};
use serde_json::{Value, json};

use crate::agent::GuestAgent;
use crate::containers::{
    Cgroups, Container, EXPORTER, FIXTURE_CONTAINERS, INTROSPECTION_METADATA, INTROSPECTION_TASKS, PAUSE,
    Proc, WEB, WORKER, enter_netns, mounts_of,
};
use crate::flows::Want;
use crate::scenario::{Ctx, Outcome, clip};

/// Where the agent's own cgroup2 goes on a v1-only host (agent/src/preflight.rs).
const OWN_CGROUP2: &str = "/run/eddy/cgroup2";
const WITHIN: Duration = Duration::from_secs(15);

/// Serves the ECS agent introspection API on a loopback port (before the agent starts).
pub fn serve_introspection() -> SocketAddr {
    json_fixture(
        Arc::new(AtomicU8::new(GOOD)),
        &[
            ("/v1/metadata", INTROSPECTION_METADATA.to_string()),
            ("/v1/tasks", INTROSPECTION_TASKS.to_string()),
        ],
    )
}

/// One expected record with the containers of its two ends and its socket's cgroup v2 id.
struct Labelled {
    want: Want,
    local: Container,
    remote: Container,
    cgroup_id: Option<u64>,
}

/// What differs between a record's `ecs` object and container `c`.
fn label_mismatches(end: &str, got: &Value, c: &Container) -> Vec<String> {
    if got.is_null() {
        return vec![format!("{end}.ecs missing (expected container {})", c.name)];
    }
    c.labels()
        .into_iter()
        .filter(|(field, want)| got[*field].as_str() != Some(want.as_str()))
        .map(|(field, want)| format!("{end}.ecs.{field} {}, expected {want:?}", got[field]))
        .collect()
}

/// Polls `/flows` until every record is exact, bytes and labels, or `timeout` passes. `Ok`: the JSON
/// records in the order of `wants`.
fn await_labelled(agent: &GuestAgent, wants: &[Labelled], timeout: Duration) -> Result<Vec<Value>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match agent.get_json("/flows") {
            Ok(doc) => {
                let raw: Vec<Value> = doc.as_array().cloned().unwrap_or_default();
                match serde_json::from_value::<Vec<FlowRecord>>(doc) {
                    Ok(records) => {
                        let mut found = Vec::new();
                        let mut problems = Vec::new();
                        for w in wants {
                            let r = match w.want.check(&records) {
                                Ok(r) => r,
                                Err(e) => {
                                    problems.push(e);
                                    continue;
                                }
                            };
                            let Some(v) = raw.iter().find(|v| {
                                v["cookie"].as_u64() == r.cookie
                                    && v["local"]["port"].as_u64() == Some(u64::from(r.local.port))
                                    && v["remote"]["port"].as_u64() == Some(u64::from(r.remote.port))
                                    && v["protocol"] == r.protocol
                            }) else {
                                problems.push(format!("{}: the JSON record vanished", w.want.side));
                                continue;
                            };
                            let mut m = label_mismatches("local", &v["local"]["ecs"], &w.local);
                            if w.cgroup_id.is_some() && v["cgroup_id"].as_u64() != w.cgroup_id {
                                m.push(format!("cgroup_id {}, expected {:?}", v["cgroup_id"], w.cgroup_id));
                            }
                            m.extend(label_mismatches("remote", &v["remote"]["ecs"], &w.remote));
                            if m.is_empty() {
                                found.push(v.clone());
                            } else {
                                problems.push(format!(
                                    "{} {} {} -> {} (pid {}, netns {}): {}",
                                    w.want.side,
                                    w.want.protocol,
                                    w.want.local,
                                    w.want.remote,
                                    v["pid"],
                                    v["netns"],
                                    m.join(", ")
                                ));
                            }
                        }
                        if problems.is_empty() {
                            return Ok(found);
                        }
                        problems.join("; ")
                    }
                    Err(e) => format!("GET /flows: not flow records ({e})"),
                }
            }
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Polls `/status` until `pred` holds; `Err` says what was last seen.
fn await_status(
    agent: &GuestAgent,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match agent.get_json("/status") {
            Ok(s) if pred(&s) => return Ok(s),
            Ok(s) if Instant::now() >= deadline => {
                return Err(format!(
                    "{what}: not within {timeout:?}; /status ecs: {}",
                    clip(&s["ecs"].to_string(), 600)
                ));
            }
            Err(e) if Instant::now() >= deadline => return Err(format!("{what}: {e}")),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn ecs_u64(s: &Value, field: &str) -> u64 {
    s["ecs"][field].as_u64().unwrap_or(0)
}

/// The ECS provider has read the fixture (cluster and its four containers); else why not, with the
/// agent's own lines about its ECS provider.
fn await_ecs_snapshot(agent: &GuestAgent) -> Result<Value, String> {
    await_status(agent, WITHIN, "the ECS agent fixture read by eddy-agent", |s| {
        s["ecs"]["cluster"] == crate::containers::CLUSTER && ecs_u64(s, "containers") == FIXTURE_CONTAINERS
    })
    .map_err(|e| {
        let log = agent.log_tail(2000);
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("ECS provider")).take(3).collect();
        format!("{e}; agent log: {}", clip(&lines.join(" | "), 600))
    })
}

/// One line per role for the evidence: container, pid, netns, `/proc/<pid>/cgroup`.
fn describe(procs: &[&Proc]) -> Vec<Value> {
    procs
        .iter()
        .map(|p| {
            json!({"container": p.container.name, "pid": p.pid, "netns": p.netns(),
                   "cgroup": p.cgroup_file().trim().lines().collect::<Vec<_>>()})
        })
        .collect()
}

fn parse_addr(v: &Value, field: &str) -> Result<SocketAddr, String> {
    v[field].as_str().and_then(|s| s.parse().ok()).ok_or_else(|| format!("child result without {field}: {v}"))
}

fn cookie(v: &Value) -> Result<u64, String> {
    v["cookie"].as_u64().ok_or_else(|| format!("child result without cookie: {v}"))
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Turns the scenario body's `Err(detail)` into a failure with the evidence gathered so far.
fn finish(r: Result<String, String>, data: Value) -> Outcome {
    match r {
        Ok(detail) => Outcome::pass(detail, data),
        Err(e) => Outcome::fail(e, data),
    }
}

pub fn cgroup_v2(ctx: &Ctx) -> Outcome {
    let mut data = json!({});
    let r = cgroup_v2_body(ctx, &mut data);
    finish(r, data)
}

fn cgroup_v2_body(ctx: &Ctx, data: &mut Value) -> Result<String, String> {
    const UP: usize = 3_210;
    const DOWN: usize = 6_543;
    const SIZES: [usize; 2] = [120, 80];
    let root = PathBuf::from("/sys/fs/cgroup");
    if !mounts_of("cgroup2").contains(&root) {
        return Err("no cgroup2 at /sys/fs/cgroup in this boot".into());
    }
    if let Some(why) = ctx.unavailable("udp") {
        return Err(why);
    }
    let before = await_ecs_snapshot(&ctx.agent)?;
    let cgroups = Cgroups::v2(&root, &[WEB, WORKER]).map_err(|e| format!("{e:#}"))?;
    let want_cgroups = ecs_u64(&before, "cgroups") + cgroups.created() as u64;
    await_status(&ctx.agent, WITHIN, "the agent's cgroup walk to see the container cgroups", |s| {
        ecs_u64(s, "cgroups") >= want_cgroups
    })?;
    let spawn = |c: &Container, a: &[&str]| cgroups.spawn(c, &args(a)).map_err(|e| format!("{e:#}"));
    let mut tcp_server = spawn(&WEB, &["tcp-server", "127.0.4.1:40001", &DOWN.to_string()])?;
    let mut udp_server = spawn(&WEB, &["udp-echo", "127.0.4.1:40002", &SIZES.len().to_string()])?;
    let mut tcp_client = spawn(&WORKER, &["tcp-client", "127.0.4.1:40001", &UP.to_string()])?;
    let sizes = SIZES.map(|s| s.to_string()).join(",");
    let mut udp_client = spawn(&WORKER, &["udp-client", "127.0.4.1:40002", &sizes])?;
    data["processes"] = json!(describe(&[&tcp_server, &udp_server, &tcp_client, &udp_client]));
    tcp_client.go().map_err(|e| format!("{e:#}"))?;
    udp_client.go().map_err(|e| format!("{e:#}"))?;
    let results: Vec<Value> = [&mut tcp_client, &mut tcp_server, &mut udp_client, &mut udp_server]
        .into_iter()
        .map(|p| p.result().map_err(|e| format!("{} child: {e:#}", p.container.name)))
        .collect::<Result<_, _>>()?;
    data["results"] = json!(results);
    let [tc, ts, uc, us] = &results[..] else { unreachable!("four results") };
    if tc["received"] != DOWN || ts["received"] != UP {
        return Err(format!("the exchange itself went wrong: client {tc}, server {ts}"));
    }
    let (server, dgram_server): (SocketAddr, SocketAddr) =
        ("127.0.4.1:40001".parse().expect("addr"), "127.0.4.1:40002".parse().expect("addr"));
    let (client, dgram_client) = (parse_addr(tc, "local")?, parse_addr(uc, "local")?);
    let (up, down) = (UP as u64, DOWN as u64);
    let bytes: u64 = SIZES.iter().sum::<usize>() as u64;
    let n = SIZES.len() as u64;
    // The sockets' cgroup v2 ids are the containers' scopes: the agent names them from the cgroup path.
    let (web_cg, worker_cg) = (cgroups.cgroup_id(&WEB), cgroups.cgroup_id(&WORKER));
    data["cgroup_ids"] = json!({"web": web_cg, "worker": worker_cg});
    let wants = [
        Labelled {
            want: Want::tcp("client", client, server, (up, down)).cookie(cookie(tc)?),
            local: WORKER,
            remote: WEB,
            cgroup_id: worker_cg,
        },
        Labelled {
            want: Want::tcp("server", server, client, (down, up)).cookie(cookie(ts)?),
            local: WEB,
            remote: WORKER,
            cgroup_id: web_cg,
        },
        Labelled {
            want: Want::udp("client", dgram_client, dgram_server, (bytes, bytes), (n, n)).cookie(cookie(uc)?),
            local: WORKER,
            remote: WEB,
            cgroup_id: worker_cg,
        },
        Labelled {
            want: Want::udp("server", dgram_server, dgram_client, (bytes, bytes), (n, n)).cookie(cookie(us)?),
            local: WEB,
            remote: WORKER,
            cgroup_id: web_cg,
        },
    ];
    let records = await_labelled(&ctx.agent, &wants, WITHIN).map_err(|e| format!("after {WITHIN:?}: {e}"))?;
    data["records"] = json!(records);
    drop((tcp_client, tcp_server, udp_client, udp_server));
    drop(cgroups);
    Ok(format!(
        "worker {client} -> web {server} TCP {UP}/{DOWN} B, UDP {n} datagrams / {bytes} B each way: \
         local.ecs and remote.ecs exact on all 4 ends (cgroup v2 ecstasks.slice layout)"
    ))
}

pub fn cgroup_v1(ctx: &Ctx) -> Outcome {
    let mut data = json!({});
    let r = cgroup_v1_body(ctx, &mut data);
    finish(r, data)
}

fn cgroup_v1_body(ctx: &Ctx, data: &mut Value) -> Result<String, String> {
    const UP: usize = 2_345;
    const DOWN: usize = 5_432;
    const UP_NS: usize = 1_111;
    const DOWN_NS: usize = 4_444;
    const SIZES: [usize; 2] = [90, 60];
    // A v1-only host: v1 hierarchies, and the only cgroup2 is the agent's own.
    let v1 = mounts_of("cgroup");
    let v2 = mounts_of("cgroup2");
    data["cgroup_v1_hierarchies"] = json!(v1);
    data["cgroup2_mounts"] = json!(v2);
    if v1.is_empty() {
        return Err("no cgroup v1 hierarchy is mounted: not a cgroup v1 boot".into());
    }
    if v2 != [PathBuf::from(OWN_CGROUP2)] {
        return Err(format!("cgroup2 mounts {v2:?}: expected only the agent's own {OWN_CGROUP2}"));
    }
    let status = ctx.agent.get_json("/status")?;
    data["kernel"] = status["kernel"].clone();
    if status["kernel"]["cgroup2_mounted_by_agent"] != true || status["kernel"]["cgroup2"] != OWN_CGROUP2 {
        return Err(format!(
            "/status kernel {}: expected cgroup2 {OWN_CGROUP2:?} with cgroup2_mounted_by_agent true",
            status["kernel"]
        ));
    }
    if let Some(why) = ctx.unavailable("udp") {
        return Err(why);
    }
    await_ecs_snapshot(&ctx.agent)?;
    let cgroups = Cgroups::v1(&v1, &[PAUSE, WEB, WORKER, EXPORTER]).map_err(|e| format!("{e:#}"))?;
    let spawn = |c: &Container, a: &[&str]| cgroups.spawn(c, &args(a)).map_err(|e| format!("{e:#}"));
    // awsvpc: the pause container holds the task's namespace, web joins it.
    let pause = spawn(&PAUSE, &["--unshare-net", "hold"])?;
    let ns_path = format!("/proc/{}/ns/net", pause.pid);
    let mut ns_server =
        spawn(&WEB, &["--netns", &ns_path, "tcp-server", "127.0.0.1:40004", &DOWN_NS.to_string()])?;
    let mut ns_echo =
        spawn(&WEB, &["--netns", &ns_path, "udp-echo", "127.0.0.1:40005", &SIZES.len().to_string()])?;
    // Host network mode (exporter) and a worker in the shared namespace.
    let mut server = spawn(&EXPORTER, &["tcp-server", "127.0.4.2:40003", &DOWN.to_string()])?;
    let mut client = spawn(&WORKER, &["tcp-client", "127.0.4.2:40003", &UP.to_string()])?;
    let all = [&pause, &ns_server, &ns_echo, &server, &client];
    let container_pids: Vec<u64> = all.iter().map(|p| u64::from(p.pid)).collect();
    data["processes"] = json!(describe(&all));
    for p in all {
        let file = p.cgroup_file();
        let path = format!("/ecs/{}/{}", p.container.task, p.container.id);
        if !file.lines().any(|l| l.ends_with(&path)) || !file.lines().any(|l| l == "0::/") {
            return Err(format!(
                "{} (pid {}): /proc/<pid>/cgroup {file:?} lacks {path} or 0::/",
                p.container.name, p.pid
            ));
        }
    }
    let procs = all.len() as u64;
    await_status(&ctx.agent, WITHIN, "the agent's /proc walk to see the container processes", |s| {
        ecs_u64(s, "container_processes") >= procs && ecs_u64(s, "container_netns") >= 1
    })?;

    // Shared namespace: worker -> exporter.
    client.go().map_err(|e| format!("{e:#}"))?;
    // The awsvpc namespace: a thread of this driver (no container names its process) is the client.
    let ns_thread = std::thread::spawn(move || -> Result<Value, String> {
        enter_netns(&ns_path).map_err(|e| format!("{e:#}"))?;
        let s = TcpStream::connect("127.0.0.1:40004").map_err(|e| format!("connect 127.0.0.1:40004: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
        let (local, ck) = (s.local_addr().map_err(|e| e.to_string())?, socket_cookie(&s));
        let ex = tcp_exchange(s, UP_NS);
        let u = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        u.connect("127.0.0.1:40005").map_err(|e| e.to_string())?;
        u.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2048];
        for size in SIZES {
            u.send(&payload(size, 4)).map_err(|e| e.to_string())?;
            let n = u.recv(&mut buf).map_err(|e| format!("echo of {size} B: {e}"))?;
            if n != size {
                return Err(format!("echo of {size} B came back with {n} B"));
            }
        }
        let ul = u.local_addr().map_err(|e| e.to_string())?;
        Ok(json!({"local": local.to_string(), "cookie": ck, "received": ex.received,
                  "udp_local": ul.to_string(), "udp_cookie": socket_cookie(&u)}))
    });
    let results: Vec<Value> = [&mut client, &mut server, &mut ns_server, &mut ns_echo]
        .into_iter()
        .map(|p| p.result().map_err(|e| format!("{} child: {e:#}", p.container.name)))
        .collect::<Result<_, _>>()?;
    let tn = ns_thread.join().map_err(|_| "the namespace thread panicked".to_string())??;
    data["results"] = json!({"worker": results[0], "exporter": results[1], "web_tcp": results[2],
                             "web_udp": results[3], "driver_in_awsvpc_netns": tn});
    let [tc, ts, ns_s, ns_u] = &results[..] else { unreachable!("four results") };
    if tc["received"] != DOWN
        || ts["received"] != UP
        || tn["received"] != DOWN_NS
        || ns_s["received"] != UP_NS
    {
        return Err(format!("the exchanges themselves went wrong: {}", data["results"]));
    }
    let server_addr: SocketAddr = "127.0.4.2:40003".parse().expect("addr");
    let ns_tcp: SocketAddr = "127.0.0.1:40004".parse().expect("addr");
    let ns_udp: SocketAddr = "127.0.0.1:40005".parse().expect("addr");
    let client_addr = parse_addr(tc, "local")?;
    let (ns_client, ns_dgram) = (parse_addr(&tn, "local")?, parse_addr(&tn, "udp_local")?);
    let udp_cookie = tn["udp_cookie"].as_u64().ok_or("no udp cookie")?;
    let bytes: u64 = SIZES.iter().sum::<usize>() as u64;
    let n = SIZES.len() as u64;
    // Every socket's cgroup v2 id is the root of the agent's own mount (it holds every process here).
    let root_cg = std::fs::metadata(OWN_CGROUP2).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok();
    data["cgroup2_root_id"] = json!(root_cg);
    let (up, down, up_ns, down_ns) = (UP as u64, DOWN as u64, UP_NS as u64, DOWN_NS as u64);
    let wants = [
        Labelled {
            want: Want::tcp("client", client_addr, server_addr, (up, down)).cookie(cookie(tc)?),
            local: WORKER,
            remote: EXPORTER,
            cgroup_id: root_cg,
        },
        Labelled {
            want: Want::tcp("server", server_addr, client_addr, (down, up)).cookie(cookie(ts)?),
            local: EXPORTER,
            remote: WORKER,
            cgroup_id: root_cg,
        },
        Labelled {
            want: Want::tcp("client", ns_client, ns_tcp, (up_ns, down_ns)).cookie(cookie(&tn)?),
            local: WEB,
            remote: WEB,
            cgroup_id: root_cg,
        },
        Labelled {
            want: Want::tcp("server", ns_tcp, ns_client, (down_ns, up_ns)).cookie(cookie(ns_s)?),
            local: WEB,
            remote: WEB,
            cgroup_id: root_cg,
        },
        Labelled {
            want: Want::udp("client", ns_dgram, ns_udp, (bytes, bytes), (n, n)).cookie(udp_cookie),
            local: WEB,
            remote: WEB,
            cgroup_id: root_cg,
        },
        Labelled {
            want: Want::udp("server", ns_udp, ns_dgram, (bytes, bytes), (n, n)).cookie(cookie(ns_u)?),
            local: WEB,
            remote: WEB,
            cgroup_id: root_cg,
        },
    ];
    let records = await_labelled(&ctx.agent, &wants, WITHIN).map_err(|e| format!("after {WITHIN:?}: {e}"))?;
    // Which way each end could be named: its pid is a container process (`/proc/<pid>/cgroup`), or only
    // its network namespace names it (the driver thread, or no pid).
    let by_pid =
        records.iter().filter(|r| r["pid"].as_u64().is_some_and(|p| container_pids.contains(&p))).count();
    let by_netns = records.len() - by_pid;
    data["records"] = json!(records);
    drop((client, server, ns_server, ns_echo, pause));
    drop(cgroups);
    Ok(format!(
        "agent mounted {OWN_CGROUP2} ({} v1 hierarchies, no other cgroup2); worker -> exporter (shared netns) \
         TCP {UP}/{DOWN} B; in web's awsvpc netns a driver thread -> web TCP {UP_NS}/{DOWN_NS} B and UDP {n} \
         datagrams / {bytes} B: local.ecs and remote.ecs exact on all 6 ends ({by_pid} named by a container \
         pid, {by_netns} only by the awsvpc netns)",
        v1.len()
    ))
}
