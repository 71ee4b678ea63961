//! The container images, built by `scripts/build-images.sh` with podman from the binaries under test.
//! The agent's runs the way `task-definitions/eddy-daemon.json` runs it: its capabilities, host network
//! and pid mode, read-only root filesystem, its mounts and environment. It must load its programs,
//! pass the task definition's health check command, and count a connection's bytes exactly. The FIPS
//! proxy's runs as `eddy-daemon-govcloud.json` runs it (host network, read-only root, its environment,
//! as nobody): it must start in FIPS mode, pass its health check and carry a request over TLS to nginx.
//! The agent's also runs as `eddy-fargate-sidecar.json` runs it (as nobody, every capability dropped,
//! read-only root, in a network namespace of its own): sock_diag, nothing kept, `no_new_privs`, its health
//! check passes and an open connection's bytes are exact.
//!
//! Podman runs rootful with runc and cgroupfs (crun fails on this hybrid-cgroup host; see
//! shared/design/MACHINE-NOTES.md). The task definition's memlock ulimit needs CAP_SYS_RESOURCE;
//! where this process lacks it the limit is left out (kernels >= 5.11 account BPF memory to the cgroup).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use eddy_tests::agent::free_loopback_port;
use eddy_tests::aws::repo_root;
use eddy_tests::*;
use serde_json::Value;

const PLAN: &[(usize, usize)] = &[(4_321, 1_234)];

struct Podman {
    conf: PathBuf,
    /// Distinguishes this test's images from those of tests running at the same time.
    tag: String,
}

impl Podman {
    /// Rootful podman with runc and cgroupfs, no default ulimits (see the crate docs).
    fn new(tag: &str) -> Podman {
        let conf = std::env::temp_dir().join(format!("eddy-containers-{tag}-{}.conf", std::process::id()));
        std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n").expect("containers.conf");
        Podman { conf, tag: format!("smoke-{tag}-{}", std::process::id()) }
    }

    /// `scripts/build-images.sh --only IMAGE --prebuilt DIR`; returns the image reference.
    fn build(&self, image: &str, bin_dir: &std::path::Path) -> String {
        let tag = &self.tag;
        let debug = std::env::temp_dir().join(format!("eddy-image-debug-{tag}-{image}"));
        let out = Command::new(repo_root().join("scripts/build-images.sh"))
            .args(["--engine", "podman", "--only", image, "--tag", tag, "--prebuilt"])
            .arg(bin_dir)
            .arg("--debug-dir")
            .arg(&debug)
            .env("CONTAINERS_CONF", &self.conf)
            .env("ENGINE_ARGS", "--runtime runc --cgroup-manager cgroupfs")
            .output()
            .expect("build-images.sh");
        // The binary goes in stripped, its debug info stays beside the build, and the size is printed.
        let debug_file = debug.join(format!("{image}.debug"));
        let debug_len = std::fs::metadata(&debug_file).map(|m| m.len()).unwrap_or(0);
        let _ = std::fs::remove_dir_all(&debug);
        assert!(out.status.success(), "build-images.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(debug_len > 0, "no debug info kept in {}: {stdout}", debug_file.display());
        assert!(
            stdout.contains(&format!("built {image}:{tag}: ")) && stdout.contains("stripped"),
            "{stdout}"
        );
        format!("localhost/{image}:{tag}")
    }

    /// Polls `GET path` on `addr` until it answers 200 with JSON (the container's logs on failure).
    fn json_when_up(&self, name: &str, addr: std::net::SocketAddr, path: &str) -> Value {
        let logs = || String::from_utf8_lossy(&self.run(&["logs", name]).stderr).into_owned();
        poll_until(Duration::from_secs(30), Duration::from_millis(200), name, || {
            match eddy_tests::http::http_get(addr, path, Duration::from_secs(2)) {
                Ok(r) if r.status == 200 => {
                    serde_json::from_str::<Value>(&r.text()).map_err(|e| e.to_string())
                }
                Ok(r) => Err(format!("HTTP {}", r.status)),
                Err(e) => Err(format!("{e}; logs: {}", logs())),
            }
        })
    }

    /// Runs the container definition's health check command inside the container; it must pass.
    fn health_check(&self, name: &str, def: &Value) {
        let hc: Vec<&str> = def["healthCheck"]["command"].as_array().expect("healthCheck")[1..]
            .iter()
            .map(|a| a.as_str().expect("arg"))
            .collect();
        let mut exec = vec!["exec", name];
        exec.extend(hc);
        let out = self.run(&exec);
        assert!(out.status.success(), "health check failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf).args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("podman")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.conf);
    }
}

fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

struct Container<'a> {
    podman: &'a Podman,
    name: String,
    image: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        self.podman.run(&["rm", "-f", "-t", "2", &self.name]);
        self.podman.run(&["rmi", "-f", &self.image]);
    }
}

#[test]
fn agent_image_runs_as_the_task_definition_says() {
    if !require_privileges() {
        return;
    }
    if Command::new("podman").arg("--version").output().is_err() {
        return skip("podman is not installed (scripts/install-deps.sh test installs podman and runc)");
    }
    let podman = Podman::new("agent");
    // Build from the very binary under test.
    let image = podman.build("eddy-agent", agent_bin().parent().expect("bin dir"));

    // Run it as the daemon task definition says.
    let td: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("task-definitions/eddy-daemon.json")).expect("read"),
    )
    .expect("task definition JSON");
    let c = &td["containerDefinitions"][0];
    assert_eq!((td["networkMode"].as_str(), td["pidMode"].as_str()), (Some("host"), Some("host")));
    let name = format!("eddy-smoke-{}", std::process::id());
    let port = free_loopback_port();
    let mut args: Vec<String> = ["run", "-d", "--name", &name, "--network", "host", "--pid", "host"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for cap in c["linuxParameters"]["capabilities"]["drop"].as_array().into_iter().flatten() {
        args.extend(["--cap-drop".into(), cap.as_str().expect("cap").into()]);
    }
    for cap in c["linuxParameters"]["capabilities"]["add"].as_array().expect("capabilities") {
        args.extend(["--cap-add".into(), cap.as_str().expect("cap").into()]);
    }
    if c["readonlyRootFilesystem"] == true {
        args.push("--read-only".into());
    }
    for m in c["mountPoints"].as_array().expect("mountPoints") {
        let volume = td["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == m["sourceVolume"]))
            .expect("volume");
        let ro = if m["readOnly"] == true { ":ro" } else { "" };
        args.extend([
            "-v".into(),
            format!(
                "{}:{}{ro}",
                volume["host"]["sourcePath"].as_str().expect("src"),
                m["containerPath"].as_str().expect("dst")
            ),
        ]);
    }
    for u in c["ulimits"].as_array().into_iter().flatten() {
        if has_cap_sys_resource() {
            args.extend([
                "--ulimit".into(),
                format!("{}={}:{}", u["name"].as_str().expect("name"), u["softLimit"], u["hardLimit"]),
            ]);
        } else {
            eprintln!("note: ulimit {} left out: this process lacks CAP_SYS_RESOURCE", u["name"]);
        }
    }
    for e in c["environment"].as_array().expect("environment") {
        let (k, v) = (e["name"].as_str().expect("name"), e["value"].as_str().expect("value"));
        let v = if k == "EDDY_LISTEN" { format!("127.0.0.1:{port}") } else { v.to_string() };
        args.extend(["-e".into(), format!("{k}={v}")]);
    }
    args.extend([
        "-e".into(),
        "EDDY_POLL_INTERVAL=200ms".into(),
        "-e".into(),
        "EDDY_EXPORT_INTERVAL=500ms".into(),
    ]);
    args.extend([
        "--entrypoint".into(),
        c["entryPoint"][0].as_str().expect("entryPoint").into(),
        image.clone(),
    ]);
    args.extend(
        c["command"].as_array().expect("command").iter().map(|a| a.as_str().expect("arg").to_string()),
    );
    let container = Container { podman: &podman, name: name.clone(), image: image.clone() };
    let out = podman.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "podman {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));

    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let status = podman.json_when_up(&name, addr, "/status");
    assert_eq!(status["collector"], "ebpf", "{status}");
    assert!(status["hooks"].as_array().is_some_and(|h| h.iter().all(|h| !h["chosen"].is_null())), "{status}");
    // Loaded with the task definition's capabilities, then down to what runs: conntrack's NET_ADMIN
    // (no ECS here: no SYS_PTRACE), and SYS_ADMIN in place of the CAP_BPF not granted only where the
    // kernel checks bpf() commands on open maps (the agent's probe, also in the status).
    let kept: Vec<&str> = status["privileges"]["capabilities"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["name"].as_str())
        .collect();
    let expected: &[&str] = match status["privileges"]["bpf_needs_capability"].as_bool() {
        Some(true) => &["CAP_NET_ADMIN", "CAP_SYS_ADMIN"],
        _ => &["CAP_NET_ADMIN"],
    };
    assert_eq!(kept, expected, "{}", status["privileges"]);
    assert_eq!(status["privileges"]["no_new_privs"], true, "{}", status["privileges"]);

    // The task definition's health check, inside the container.
    podman.health_check(&name, c);

    // Exact bytes, as JSON lines on the container's stdout (EDDY_OUTPUT=jsonl in the task definition).
    let server = exchanges_between_namespaces("image", PLAN);
    poll_until(
        Duration::from_secs(15),
        Duration::from_millis(300),
        "the flow in the container's stdout",
        || {
            let out = podman.run(&["logs", &name]);
            let found = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|v| {
                    v["remote"]["port"] == server.port()
                        && v["direction"] == "outgoing"
                        && v["bytes_sent"] == PLAN[0].0
                        && v["bytes_received"] == PLAN[0].1
                });
            if found { Ok(()) } else { Err("not yet".into()) }
        },
    );
    drop(container);
}

#[test]
fn fips_proxy_image_runs_as_the_govcloud_task_definition_says() {
    if !require_privileges() {
        return;
    }
    if Command::new("podman").arg("--version").output().is_err() {
        return skip("podman is not installed (scripts/install-deps.sh test installs podman and runc)");
    }
    if !eddy_tests::fips_proxy::proxy_available() {
        return;
    }
    if !eddy_tests::tls_peer::openssl_available() {
        return skip("the openssl command is not installed (apt-get install openssl)");
    }
    let pki = eddy_tests::tls_peer::TestPki::generate("image");
    let Some(intake) = eddy_tests::tls_peer::nginx(&pki) else {
        return skip("nginx is not installed (apt-get install nginx-light)");
    };
    let podman = Podman::new("proxy");
    let image =
        podman.build("eddy-fips-proxy", eddy_tests::fips_proxy::proxy_bin().parent().expect("bin dir"));

    let td: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("task-definitions/eddy-daemon-govcloud.json"))
            .expect("read"),
    )
    .expect("task definition JSON");
    assert_eq!(td["networkMode"], "host");
    let c = td["containerDefinitions"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == "eddy-fips-proxy"))
        .expect("eddy-fips-proxy container");
    let start = eddy_tests::fips_proxy::free_port_range(1);
    let name = format!("eddy-proxy-smoke-{}", std::process::id());
    let mut args: Vec<String> =
        ["run", "-d", "--name", &name, "--network", "host"].iter().map(|s| s.to_string()).collect();
    if c["readonlyRootFilesystem"] == true {
        args.push("--read-only".into());
    }
    if let Some(user) = c["user"].as_str() {
        args.extend(["--user".into(), user.into()]);
    }
    for e in c["environment"].as_array().expect("environment") {
        let (k, v) = (e["name"].as_str().expect("name"), e["value"].as_str().expect("value"));
        let v = if k == "EDDY_FIPS_PORT_RANGE_START" { start.to_string() } else { v.to_string() };
        args.extend(["-e".into(), format!("{k}={v}")]);
    }
    // What render-task-definition.sh --otlp-endpoint adds, pointed at a local nginx with a test CA.
    args.extend([
        "-v".into(),
        format!("{}:/pki:ro", pki.dir.display()),
        "-e".into(),
        format!(
            "EDDY_FIPS_OTLP_UPSTREAM=https://127.0.0.1:{}/v1/metrics?server_name={}&ca_file=/pki/ca.pem",
            intake.addr.port(),
            eddy_tests::tls_peer::GOOD_NAME
        ),
        image.clone(),
    ]);
    let container = Container { podman: &podman, name: name.clone(), image: image.clone() };
    let out = podman.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "podman {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));

    let status_addr = std::net::SocketAddr::from(([127, 0, 0, 1], start));
    let status = podman.json_when_up(&name, status_addr, "/");
    assert_eq!(status["fips_mode"], true, "{status}");
    assert!(status["crypto_module"].as_str().is_some_and(|m| m.starts_with("AWS-LC FIPS")), "{status}");
    let uid = podman.run(&["inspect", "--format", "{{.Config.User}}", &name]);
    assert_eq!(String::from_utf8_lossy(&uid.stdout).trim(), "65534:65534", "runs as nobody");

    // The task definition's health check, inside the container.
    podman.health_check(&name, c);

    // A request on the otlp route reaches nginx over TLS, with Host rewritten to the upstream's name.
    let route = std::net::SocketAddr::from(([127, 0, 0, 1], start + 1));
    let r = eddy_tests::http::http_get(route, "/v1/metrics", Duration::from_secs(5)).expect("route");
    let body = r.text();
    let logs = String::from_utf8_lossy(&podman.run(&["logs", &name]).stderr).into_owned();
    assert_eq!(r.status, 200, "{body}\n{logs}");
    assert!(body.contains(&format!("host={}", eddy_tests::tls_peer::GOOD_NAME)), "{body}");
    assert!(body.contains("uri=/v1/metrics"), "{body}");
    drop(container);
}

#[test]
fn agent_image_runs_as_the_fargate_sidecar_says() {
    if !require_privileges() {
        return;
    }
    if Command::new("podman").arg("--version").output().is_err() {
        return skip("podman is not installed (scripts/install-deps.sh test installs podman and runc)");
    }
    let podman = Podman::new("sidecar");
    let image = podman.build("eddy-agent", agent_bin().parent().expect("bin dir"));
    let td: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("task-definitions/eddy-fargate-sidecar.json"))
            .expect("read"),
    )
    .expect("task definition JSON");
    let c = td["containerDefinitions"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == "eddy-agent"))
        .expect("eddy-agent container");
    let user = c["user"].as_str().expect("the sidecar names its user");
    // The task's network namespace (awsvpc): one of the test's, the listen address as the task says.
    let ns = NetNs::new("sidecar");
    let name = format!("eddy-sidecar-smoke-{}", std::process::id());
    let network = format!("ns:/run/netns/{}", ns.name());
    let mut args: Vec<String> = ["run", "-d", "--name", &name, "--network", &network, "--user", user]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for cap in c["linuxParameters"]["capabilities"]["drop"].as_array().into_iter().flatten() {
        args.extend(["--cap-drop".into(), cap.as_str().expect("cap").into()]);
    }
    if c["readonlyRootFilesystem"] == true {
        args.push("--read-only".into());
    }
    let mut listen = String::new();
    for e in c["environment"].as_array().expect("environment") {
        let (k, v) = (e["name"].as_str().expect("name"), e["value"].as_str().expect("value"));
        if k == "EDDY_LISTEN" {
            listen = v.to_string();
        }
        args.extend(["-e".into(), format!("{k}={v}")]);
    }
    args.extend(["-e".into(), "EDDY_POLL_INTERVAL=200ms".into(), "--entrypoint".into()]);
    args.extend([c["entryPoint"][0].as_str().expect("entryPoint").to_string(), image.clone()]);
    args.extend(
        c["command"].as_array().expect("command").iter().map(|a| a.as_str().expect("arg").to_string()),
    );
    let container = Container { podman: &podman, name: name.clone(), image: image.clone() };
    let out = podman.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "podman {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));

    let addr: std::net::SocketAddr = listen.parse().expect("EDDY_LISTEN");
    let json = |path: &'static str| -> Result<Value, String> {
        let r = ns.run(move || eddy_tests::http::http_get(addr, path, Duration::from_secs(2)));
        match r {
            Ok(r) if r.status == 200 => serde_json::from_str(&r.text()).map_err(|e| e.to_string()),
            Ok(r) => Err(format!("HTTP {}", r.status)),
            Err(e) => {
                Err(format!("{e}; logs: {}", String::from_utf8_lossy(&podman.run(&["logs", &name]).stderr)))
            }
        }
    };
    let status =
        poll_until(Duration::from_secs(30), Duration::from_millis(200), "the sidecar's /status", || {
            json("/status")
        });
    assert_eq!(status["collector"], "sock_diag", "{status}");
    assert_eq!(status["privileges"]["capabilities"], serde_json::json!([]), "{status}");
    assert_eq!(status["privileges"]["no_new_privs"], true, "{status}");
    // The process: nobody, no capability at all, no_new_privs.
    let pid = podman.run(&["inspect", "--format", "{{.State.Pid}}", &name]);
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the agent's status");
    let line = |k: &str| proc_status.lines().find(|l| l.starts_with(k)).unwrap_or_default().to_string();
    assert_eq!(line("Uid:").split_whitespace().nth(2), Some("65534"), "{proc_status}");
    assert_eq!(line("Gid:").split_whitespace().nth(2), Some("65534"), "{proc_status}");
    for k in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:", "CapBnd:"] {
        assert_eq!(line(k).split_whitespace().nth(1), Some("0000000000000000"), "{k} {proc_status}");
    }
    assert_eq!(line("NoNewPrivs:").split_whitespace().nth(1), Some("1"), "{proc_status}");
    podman.health_check(&name, c);

    // A connection in the task's namespace, open across polls: exact bytes.
    let (mut client, mut server, _listener) = ns.run(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        (c, s, l)
    });
    use std::io::{Read, Write};
    let (up, down) = PLAN[0];
    client.write_all(&payload(up, 1)).expect("write up");
    let mut buf = vec![0u8; up.max(down)];
    server.read_exact(&mut buf[..up]).expect("read up");
    server.write_all(&payload(down, 2)).expect("write down");
    client.read_exact(&mut buf[..down]).expect("read down");
    let (local, remote) = (client.local_addr().expect("addr"), server.local_addr().expect("addr"));
    poll_until(Duration::from_secs(15), Duration::from_millis(200), "the sidecar's flow", || {
        let flows = json("/flows")?;
        let found = flows.as_array().into_iter().flatten().any(|f| {
            f["local"]["port"] == local.port()
                && f["remote"]["port"] == remote.port()
                && f["bytes_sent"] == up
                && f["bytes_received"] == down
        });
        if found { Ok(()) } else { Err(flows.to_string()) }
    });
    drop(container);
}

/// The arm64 binaries `scripts/cross-build.sh --debug` leaves beside the host's.
fn arm64_bin_dir() -> PathBuf {
    let agent = agent_bin().canonicalize().expect("agent binary path");
    let host_dir = agent.parent().expect("bin dir").to_path_buf();
    let profile = host_dir.file_name().expect("profile dir").to_owned();
    repo_root().join("target/aarch64-unknown-linux-gnu").join(profile)
}

#[test]
fn one_tag_for_amd64_and_arm64() {
    if !require_privileges() {
        return;
    }
    if Command::new("podman").arg("--version").output().is_err() {
        return skip("podman is not installed (scripts/install-deps.sh test installs podman and runc)");
    }
    let arm64 = arm64_bin_dir();
    if !arm64.join("eddy-agent").is_file() {
        return skip(&format!(
            "no arm64 agent in {} (scripts/cross-build.sh --debug builds it)",
            arm64.display()
        ));
    }
    let podman = Podman::new("multiarch");
    let tag = &podman.tag;
    let debug = std::env::temp_dir().join(format!("eddy-image-debug-{tag}"));
    let out = Command::new(repo_root().join("scripts/build-images.sh"))
        .args(["--engine", "podman", "--only", "eddy-agent", "--tag", tag, "--arch", "amd64,arm64"])
        .arg("--prebuilt")
        .arg(agent_bin().parent().expect("bin dir"))
        .arg("--prebuilt-arm64")
        .arg(&arm64)
        .arg("--debug-dir")
        .arg(&debug)
        .env("CONTAINERS_CONF", &podman.conf)
        .env("ENGINE_ARGS", "--runtime runc --cgroup-manager cgroupfs")
        .output()
        .expect("build-images.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let list = format!("eddy-agent:{tag}");
    let cleanup = || {
        podman.run(&["manifest", "rm", &list]);
        for a in ["amd64", "arm64"] {
            podman.run(&["rmi", "-f", &format!("{list}-{a}")]);
        }
        let _ = std::fs::remove_dir_all(&debug);
    };
    if !out.status.success() {
        cleanup();
        panic!("build-images.sh failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    }
    // Each architecture's image, its debug info kept apart, and each one's entry point ran (arm64's
    // through qemu-aarch64-static) and said the agent's version.
    let version = {
        let o = Command::new(agent_bin()).arg("--version").output().expect("agent --version");
        // "eddy-agent 0.1.0", without the host build's "(features: …)": the arm64 build has its own.
        let line = String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().to_string();
        line.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
    };
    for a in ["amd64", "arm64"] {
        let debug_file = debug.join(a).join("eddy-agent.debug");
        let has_debug = debug_file.is_file();
        let built = stdout.contains(&format!("built eddy-agent:{tag}-{a}: "));
        let ran = stdout.contains(&format!("smoke-run eddy-agent:{tag}-{a} ({a}): {version}"));
        if !(has_debug && built && ran) {
            cleanup();
            panic!("{a}: debug info {has_debug}, built {built}, smoke-run {ran}:\n{stdout}");
        }
    }
    // One tag naming both, as the manifest list says.
    let inspect = podman.run(&["manifest", "inspect", &list]);
    let platforms: Vec<String> = serde_json::from_slice::<Value>(&inspect.stdout)
        .ok()
        .and_then(|v| v["manifests"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap_or("?"),
                m["platform"]["architecture"].as_str().unwrap_or("?")
            )
        })
        .collect();
    cleanup();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "{stdout}");
    assert!(stdout.contains(&format!("manifest list {list}: linux/amd64, linux/arm64")), "{stdout}");
}
