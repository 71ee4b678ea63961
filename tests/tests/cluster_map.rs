//! The cluster map of two container instances, as an operator sees it. One kernel stands for
//! two EC2 instances in two Availability Zones: each "instance" is a network namespace with its
//! task's address and a cgroup subtree with its task's container, watched by an agent of its own
//! (`--cgroup-scope`, its own ECS agent fixture and its own IMDS fixture, us-east-1a and
//! us-east-1b). moto holds the cluster (two container instances, the awsvpc tasks `web` and
//! `worker` placed one on each) and the VPC (an ALB and a NAT gateway in us-east-1b).
//!
//! `web` sends known bytes to `worker` (cross-AZ), to the ALB (cross-AZ, not billed) and to the
//! NAT gateway (cross-AZ + NAT processing), and one connection of `web` is refused. A real
//! Prometheus scrapes both agents; `eddy-agent map` over it and the page in a headless Chromium
//! show each edge once with the exact bytes and connections (both agents report `web → worker`:
//! a sum would double it), its scope, and its estimated cost to the cent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eddy_tests::aws::{MotoServer, Tools, cli_json};
use eddy_tests::ecs_fixture::{
    EcsCgroups, GOOD, container_test_prerequisites, first_line, json_fixture, python_in,
};
use eddy_tests::imds_fixture::Imds;
use eddy_tests::map_page::{MapServer, attr_of, chromium, get_json, render};
use eddy_tests::netns::{NetNs, veth_link};
use eddy_tests::prometheus::{Prometheus, tool};
use eddy_tests::*;
use serde_json::{Value, json};

const REGION: &str = "us-east-1";
const WEB_DOCKER: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";
const WORKER_DOCKER: &str = "7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a";
const ALB: &str = "10.0.2.20";
const NAT: &str = "10.0.2.21";
/// An address in the VPC where nothing listens: the failing peer.
const FAILING: &str = "10.0.2.99";
const WORKER_PORT: u16 = 9000;

/// `web → worker`: bytes sent by `web` and answered by `worker`, per connection. 500 MB cross-AZ
/// is a cent at $0.01/GB each way.
const PLAN: [(usize, usize); 3] = [(500_000_000, 7), (2_345, 70), (10, 700)];

/// `worker`: accepts one connection per reply size on WORKER_PORT; reads each to EOF, answers.
const SERVER: &str = "import socket,sys\nsys.stdin.readline()\nl=socket.socket()\n\
l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\nl.bind(('0.0.0.0',int(sys.argv[1])))\nl.listen(8)\n\
print('ready',flush=True)\nfor n in sys.argv[2:]:\n    c,_=l.accept()\n    while c.recv(1<<20):\n        pass\n    \
c.sendall(b'y'*int(n))\n    c.close()\n";

/// `web`: from address argv[1], one connection per `ip:port:bytes`: send (1 MiB at a time),
/// half-close, read the answer to EOF; a refused connection prints `refused`. Then `done`.
const CLIENT: &str = "import socket,sys\nsys.stdin.readline()\nsrc=sys.argv[1]\nfor t in sys.argv[2:]:\n    \
ip,port,n=t.split(':')\n    n=int(n)\n    try:\n        s=socket.create_connection((ip,int(port)),timeout=30,\
source_address=(src,0))\n    except ConnectionRefusedError:\n        print('refused',flush=True)\n        continue\n    \
chunk=b'x'*(1<<20)\n    while n>0:\n        k=min(n,len(chunk))\n        s.sendall(chunk[:k])\n        n-=k\n    \
s.shutdown(socket.SHUT_WR)\n    while s.recv(65536):\n        pass\n    s.close()\nprint('done',flush=True)\n";

/// A task moto placed: ARN, id and ENI address.
struct Task {
    arn: String,
    ip: String,
}

impl Task {
    /// The task id without dashes, as in the ECS agent's cgroup paths.
    fn cgroup_id(&self) -> String {
        self.arn.rsplit('/').next().unwrap_or_default().replace('-', "")
    }
}

/// What moto holds: the VPC, the container instances (A in us-east-1a, B in us-east-1b) and tasks.
struct Cloud {
    vpc: String,
    instances: [String; 2],
    web: Task,
    worker: Task,
}

fn populate(tools: &Tools, endpoint: &str) -> Cloud {
    let aws = |args: &[&str]| cli_json(&tools.aws(endpoint, REGION, args).expect("aws cli against moto"));
    let id = |v: Value, ptr: &str| v.pointer(ptr).and_then(Value::as_str).expect(ptr).to_string();
    aws(&["ecs", "create-cluster", "--cluster-name", "flows"]);
    let vpc = id(aws(&["ec2", "create-vpc", "--cidr-block", "10.0.0.0/16"]), "/Vpc/VpcId");
    aws(&["ec2", "modify-vpc-attribute", "--vpc-id", &vpc, "--enable-dns-hostnames", r#"{"Value":true}"#]);
    let subnet = |cidr: &str, az: &str| {
        let s =
            aws(&["ec2", "create-subnet", "--vpc-id", &vpc, "--cidr-block", cidr, "--availability-zone", az]);
        id(s, "/Subnet/SubnetId")
    };
    let subnets = [subnet("10.0.1.0/24", "us-east-1a"), subnet("10.0.2.0/24", "us-east-1b")];
    let sg = id(
        aws(&[
            "ec2",
            "create-security-group",
            "--group-name",
            "tasks",
            "--description",
            "t",
            "--vpc-id",
            &vpc,
        ]),
        "/GroupId",
    );
    let mut instances = Vec::new();
    for (subnet, (az, ip)) in subnets.iter().zip([("us-east-1a", "10.0.1.10"), ("us-east-1b", "10.0.2.10")]) {
        let run = ["ec2", "run-instances", "--image-id", "ami-12c6146b", "--count", "1", "--subnet-id"];
        let i = id(
            aws(&[&run[..], &[subnet.as_str(), "--private-ip-address", ip]].concat()),
            "/Instances/0/InstanceId",
        );
        let doc =
            json!({"instanceId": i, "region": REGION, "availabilityZone": az, "privateIp": ip}).to_string();
        let ci = aws(&[
            "ecs",
            "register-container-instance",
            "--cluster",
            "flows",
            "--instance-identity-document",
            &doc,
        ]);
        instances.push(id(ci, "/containerInstance/containerInstanceArn"));
    }
    let instances: [String; 2] = instances.try_into().expect("two instances");
    for family in ["web", "worker"] {
        let containers = json!([{"name": family, "image": format!("{family}:1"), "memoryReservation": 128}]);
        aws(&[
            "ecs",
            "register-task-definition",
            "--family",
            family,
            "--network-mode",
            "awsvpc",
            "--memory",
            "512",
            "--container-definitions",
            &containers.to_string(),
        ]);
    }
    // moto places a task on the first ACTIVE container instance with room: drain the other one.
    let place = |family: &str, on: usize| {
        let state = |i: usize, s: &str| {
            aws(&[
                "ecs",
                "update-container-instances-state",
                "--cluster",
                "flows",
                "--container-instances",
                &instances[i],
                "--status",
                s,
            ]);
        };
        state(1 - on, "DRAINING");
        let net =
            json!({"awsvpcConfiguration": {"subnets": [subnets[on]], "securityGroups": [sg]}}).to_string();
        let run = aws(&[
            "ecs",
            "run-task",
            "--cluster",
            "flows",
            "--task-definition",
            family,
            "--launch-type",
            "EC2",
            "--group",
            &format!("service:{family}"),
            "--network-configuration",
            &net,
        ]);
        state(1 - on, "ACTIVE");
        let t = &run["tasks"][0];
        assert_eq!(t["containerInstanceArn"], instances[on].as_str(), "{run}");
        let ip = t["attachments"][0]["details"]
            .as_array()
            .and_then(|d| d.iter().find(|kv| kv["name"] == "privateIPv4Address"))
            .and_then(|kv| kv["value"].as_str())
            .unwrap_or_else(|| panic!("no ENI address in {run}"))
            .to_string();
        Task { arn: t["taskArn"].as_str().expect("task arn").to_string(), ip }
    };
    let (web, worker) = (place("web", 0), place("worker", 1));
    let eni = |ip: &str, description: &str| {
        let args =
            ["ec2", "create-network-interface", "--subnet-id", &subnets[1], "--private-ip-address", ip];
        aws(&[&args[..], &["--description", description]].concat());
    };
    eni(ALB, "ELB app/orders-alb/50dc6c495c0c9188");
    eni(NAT, "Interface for NAT Gateway nat-0a1b2c3d4e5f67890");
    Cloud { vpc, instances, web, worker }
}

/// One "instance": its ECS agent fixture (the task on it), its IMDS fixture and its agent.
struct Instance {
    agent: RunAgent,
    _imds: Imds,
}

impl Instance {
    fn start(
        cloud: &Cloud,
        which: usize,
        task: &Task,
        container: &str,
        scope: &std::path::Path,
        moto: &str,
    ) -> Instance {
        let (family, az) = [("web", "us-east-1a"), ("worker", "us-east-1b")][which];
        let metadata = json!({"Cluster": "flows", "ContainerInstanceArn": cloud.instances[which],
            "Version": "Amazon ECS Agent - v1.99.0 (abcdef12)"});
        let tasks = json!({"Tasks": [{"Arn": task.arn, "DesiredStatus": "RUNNING", "KnownStatus": "RUNNING",
            "Family": family, "Version": "1", "Containers": [{"DockerId": container,
            "DockerName": format!("ecs-{family}-1-{family}-e0c1a2b3d4e5f6a7b800"), "Name": family,
            "Image": format!("{family}:1"), "ImageID": "",
            "Networks": [{"NetworkMode": "awsvpc", "IPv4Addresses": [task.ip]}]}]}]});
        let fixture = json_fixture(
            Arc::new(AtomicU8::new(GOOD)),
            &[("/v1/metadata", metadata.to_string()), ("/v1/tasks", tasks.to_string())],
        );
        let imds = Imds::start(Imds::instance(az, &cloud.vpc, "subnet-host", &["10.0.0.0/8"]));
        let env: Vec<(String, String)> = [
            ("AWS_ENDPOINT_URL", moto),
            ("AWS_REGION", REGION),
            ("AWS_EC2_METADATA_DISABLED", "false"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint.as_str()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let agent = RunAgent::start_with(
            &[
                "--poll-interval",
                "200ms",
                "--export-interval",
                "500ms",
                "--ecs-agent-uri",
                &format!("http://{fixture}"),
                "--ecs-refresh-interval",
                "200ms",
                "--ecs-api-refresh-interval",
                "1s",
                "--aws-api-calls-per-second",
                "50",
                "--cgroup-scope",
                &scope.display().to_string(),
            ],
            &RunOptions { env, ..Default::default() },
        );
        poll_until(Duration::from_secs(30), Duration::from_millis(200), "ECS labels, tasks and zone", || {
            let s = agent.status();
            let (containers, tasks, zone) =
                (&s["ecs"]["containers"], &s["ecs_api"]["tasks"], &s["aws"]["identity"]["availability_zone"]);
            if containers.as_u64() >= Some(1) && tasks.as_u64() >= Some(2) && zone == az {
                Ok(())
            } else {
                Err(format!("containers {containers}, API tasks {tasks}, zone {zone}"))
            }
        });
        Instance { agent, _imds: imds }
    }
}

/// Accepts connections on `addr` in `ns` until the test ends: reads each to EOF, answers one
/// byte; the sizes read, in order.
fn serve(ns: &NetNs, addr: SocketAddr) -> Arc<Mutex<Vec<usize>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let out = sizes.clone();
    drop(ns.spawn(move || {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        tx.send(()).expect("ready");
        for s in l.incoming() {
            let mut s = s.expect("accept");
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).expect("read");
            s.write_all(b"k").expect("reply");
            sizes.lock().expect("sizes").push(buf.len());
        }
    }));
    rx.recv().expect("server ready");
    out
}

/// The edge `client → server` of a model.
fn edge<'a>(model: &'a Value, client: &str, server: &str) -> Result<&'a Value, String> {
    model["edges"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["client"] == client && e["server"] == server))
        .ok_or_else(|| format!("no edge {client} → {server} in {:#}", model["edges"]))
}

/// Dollars, from a whole number of attodollars (the bytes × the price per byte, exactly).
fn usd(atto: u128) -> f64 {
    atto as f64 / 1e18
}

/// Per byte: cross-AZ $0.01/GB each way (×2), NAT processing $0.045/GB, in attodollars.
const CROSS_AZ_ATTO: u128 = 20_000_000;
const NAT_ATTO: u128 = 45_000_000;

/// Checks `web → worker` (exact bytes and connections, cross-AZ, priced) in a model.
fn web_to_worker(model: &Value) -> Result<(), String> {
    let e = edge(model, "service:flows/web", "service:flows/worker")?;
    let (up, down): (usize, usize) = (PLAN.iter().map(|p| p.0).sum(), PLAN.iter().map(|p| p.1).sum());
    let got = (&e["bytes_client_to_server"], &e["bytes_server_to_client"], &e["connections"]);
    if got != (&Value::from(up), &Value::from(down), &Value::from(PLAN.len())) {
        return Err(format!("bytes/connections {got:?}, want ({up}, {down}, {}): {e:#}", PLAN.len()));
    }
    let cost = usd((up + down) as u128 * CROSS_AZ_ATTO);
    let want = (Value::from("cross-az"), Value::from(true), Value::from(0), Value::from(cost));
    let got = (e["scope"].clone(), e["cross_az"].clone(), e["failed_total"].clone(), e["cost_usd"].clone());
    if got != want {
        return Err(format!("scope/cross_az/failed/cost {got:?}, want {want:?}: {e:#}"));
    }
    Ok(())
}

/// The ALB and NAT gateway edges, `n` connections of 100 bytes up and 1 down each.
fn aws_edges(model: &Value, n: [u64; 2]) -> Result<(), String> {
    for (server, n, atto) in [
        ("aws:alb/orders-alb", n[0], 0),
        ("aws:nat_gateway/nat-0a1b2c3d4e5f67890", n[1], CROSS_AZ_ATTO + NAT_ATTO),
    ] {
        let e = edge(model, "service:flows/web", server)?;
        let got =
            (&e["bytes_client_to_server"], &e["bytes_server_to_client"], &e["connections"], &e["cross_az"]);
        if got != (&(100 * n).into(), &n.into(), &n.into(), &true.into()) {
            return Err(format!("{server}: {got:?}, want {n} connections of 100/1 bytes: {e:#}"));
        }
        if e["cost_usd"].as_f64() != Some(usd(u128::from(101 * n) * atto)) {
            return Err(format!(
                "{server}: cost {}, want {}: {e:#}",
                e["cost_usd"],
                usd(u128::from(101 * n) * atto)
            ));
        }
    }
    Ok(())
}

/// The one edge with a failure: `web →` the failing address, refused once.
fn refused_edge(model: &Value) -> Result<(), String> {
    match model["edges"].as_array().map(Vec::as_slice) {
        Some([e])
            if e["client"] == "service:flows/web"
                && e["failed"]["refused"] == 1
                && e["failed_total"] == 1 =>
        {
            Ok(())
        }
        _ => Err(format!("want one web edge with 1 refused connection: {:#}", model["edges"])),
    }
}

/// The text of the element carrying `marker`.
fn text_of(dom: &str, marker: &str) -> Option<String> {
    let at = dom.find(marker)?;
    let from = at + dom[at..].find('>')? + 1;
    Some(dom[from..from + dom[from..].find('<')?].to_string())
}

#[test]
fn two_instances_in_two_zones_make_one_cluster_map_with_exact_edges_and_costs() {
    let Some(root) = container_test_prerequisites() else { return };
    let Some(prometheus) = tool("prometheus") else {
        skip("prometheus not installed (Debian package `prometheus`; scripts/install-deps.sh test)");
        return;
    };
    let tools = match Tools::find() {
        Ok(t) => t,
        Err(reason) => return skip(&reason),
    };
    let moto = MotoServer::start(&tools).expect("moto");
    let cloud = populate(&tools, &moto.endpoint);

    // The instances' networks: web's address in A, worker's in B, the AWS resources beside A.
    let (a, b, vpc) = (NetNs::new("inst-a"), NetNs::new("inst-b"), NetNs::new("vpc"));
    let ab = veth_link(&a, &b);
    a.ip(&["addr", "add", &format!("{}/32", cloud.web.ip), "dev", &ab.a_if]);
    b.ip(&["addr", "add", &format!("{}/32", cloud.worker.ip), "dev", &ab.b_if]);
    a.ip(&["route", "add", &format!("{}/32", cloud.worker.ip), "via", &ab.b_v4.to_string()]);
    b.ip(&["route", "add", &format!("{}/32", cloud.web.ip), "via", &ab.a_v4.to_string()]);
    let av = veth_link(&a, &vpc);
    for ip in [ALB, NAT, FAILING] {
        vpc.ip(&["addr", "add", &format!("{ip}/32"), "dev", &av.b_if]);
        a.ip(&["route", "add", &format!("{ip}/32"), "via", &av.b_v4.to_string()]);
    }
    vpc.ip(&["route", "add", &format!("{}/32", cloud.web.ip), "via", &av.a_v4.to_string()]);

    let pid = std::process::id();
    let (scope_a, scope_b) = (format!("eddy-instance-a-{pid}"), format!("eddy-instance-b-{pid}"));
    let cg_a = EcsCgroups::create_under(&root, &scope_a, &[(&cloud.web.cgroup_id(), WEB_DOCKER)]);
    let cg_b = EcsCgroups::create_under(&root, &scope_b, &[(&cloud.worker.cgroup_id(), WORKER_DOCKER)]);
    let ia = Instance::start(&cloud, 0, &cloud.web, WEB_DOCKER, &root.join(&scope_a), &moto.endpoint);
    let ib = Instance::start(&cloud, 1, &cloud.worker, WORKER_DOCKER, &root.join(&scope_b), &moto.endpoint);
    let prom = Prometheus::start_many(&prometheus, &[ia.agent.addr(), ib.agent.addr()]);

    // Traffic: web → worker (the plan), one refused connection, then two rounds to the ALB and the
    // NAT gateway (the first contact queues their lookups; the second round is named at the latest).
    let replies: Vec<String> =
        std::iter::once(WORKER_PORT.to_string()).chain(PLAN.iter().map(|p| p.1.to_string())).collect();
    let mut worker = python_in(&cg_b.procs(WORKER_DOCKER), Some(b.name()), SERVER, &replies);
    assert_eq!(first_line(&mut worker), "ready");
    let web = |targets: Vec<String>| {
        let args: Vec<String> = std::iter::once(cloud.web.ip.clone()).chain(targets).collect();
        let mut c = python_in(&cg_a.procs(WEB_DOCKER), Some(a.name()), CLIENT, &args);
        let mut out = String::new();
        c.stdout.take().expect("stdout").read_to_string(&mut out).expect("client output");
        assert!(c.wait().expect("client").success(), "{out}");
        out
    };
    let mut plan: Vec<String> =
        PLAN.iter().map(|p| format!("{}:{WORKER_PORT}:{}", cloud.worker.ip, p.0)).collect();
    plan.push(format!("{FAILING}:8443:1"));
    assert_eq!(web(plan), "refused\ndone\n");
    assert!(worker.wait().expect("worker").success());
    let servers: Vec<_> =
        [ALB, NAT].iter().map(|ip| serve(&vpc, SocketAddr::new(ip.parse().expect("ip"), 443))).collect();
    let closed_named = |agent: &RunAgent, ip: &str| -> u64 {
        let flows: Vec<Value> =
            serde_json::from_str(&agent.get("/flows?limit=100000").text()).expect("/flows");
        flows
            .iter()
            .filter(|f| {
                f["remote"]["addr"] == ip && !f["closed_at"].is_null() && f["remote"]["aws"].is_object()
            })
            .count() as u64
    };
    let mut rounds = 0;
    'rounds: while rounds < 5 {
        assert_eq!(web(vec![format!("{ALB}:443:100"), format!("{NAT}:443:100")]), "done\n");
        rounds += 1;
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if closed_named(&ia.agent, ALB) > 0 && closed_named(&ia.agent, NAT) > 0 {
                break 'rounds;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for s in &servers {
        assert_eq!(*s.lock().expect("sizes"), vec![100; rounds], "every round's bytes arrived");
    }

    // Each agent kept to its instance: A has web's ends only, B worker's only.
    poll_until(
        Duration::from_secs(15),
        Duration::from_millis(300),
        "each agent sees its own sockets",
        || {
            let fa: Vec<Value> = serde_json::from_str(&ia.agent.get("/flows?limit=100000").text())
                .map_err(|e| e.to_string())?;
            let fb: Vec<Value> = serde_json::from_str(&ib.agent.get("/flows?limit=100000").text())
                .map_err(|e| e.to_string())?;
            let from_web = fa
                .iter()
                .filter(|f| {
                    f["remote"]["addr"] == cloud.worker.ip.as_str() && f["remote"]["port"] == WORKER_PORT
                })
                .count();
            let at_worker = fb.iter().filter(|f| f["local"]["port"] == WORKER_PORT).count();
            let leaks = fa.iter().filter(|f| f["local"]["port"] == WORKER_PORT).count()
                + fb.iter()
                    .filter(|f| {
                        f["remote"]["port"] == WORKER_PORT || f["local"]["addr"] == cloud.web.ip.as_str()
                    })
                    .count();
            if (from_web, at_worker, leaks) == (PLAN.len(), PLAN.len(), 0) {
                Ok(())
            } else {
                Err(format!(
                    "web's flows in A {from_web}, worker's in B {at_worker}, the other's in either {leaks}"
                ))
            }
        },
    );
    for i in [&ia, &ib] {
        let s = i.agent.status()["cgroup_scope"].clone();
        assert!(s["exists"] == true && s["flows_outside"].as_u64() > Some(0), "{s:#}");
    }
    // The connections to the ALB and NAT gateway that came out named (the first contact queues
    // the lookup: it may come out unnamed).
    let n = [closed_named(&ia.agent, ALB), closed_named(&ia.agent, NAT)];
    assert!(n.iter().all(|&n| n >= 1 && n <= rounds as u64), "named ALB/NAT connections: {n:?} of {rounds}");

    // Each agent's own map has the edge from its end.
    for (name, i) in [("A (web)", &ia), ("B (worker)", &ib)] {
        poll_until(
            Duration::from_secs(15),
            Duration::from_millis(300),
            &format!("web → worker on agent {name}'s map"),
            || web_to_worker(&get_json(i.agent.addr(), "/api/map?window=5m&search=worker")?),
        );
    }

    // The cluster: Prometheus over both agents, each edge once.
    let map = MapServer::start(prom.addr);
    let model = poll_until(Duration::from_secs(30), Duration::from_millis(500), "the cluster map", || {
        let m = get_json(map.addr, "/api/map?window=5m&scope=cross-az")?;
        web_to_worker(&m)?;
        aws_edges(&m, n)?;
        Ok(m)
    });
    let top = &model["tables"]["top_cross_az_cost"];
    assert_eq!(
        top[0],
        edge(&model, "service:flows/web", "service:flows/worker").expect("edge")["id"],
        "{model:#}"
    );
    assert!(
        !top.as_array()
            .expect("table")
            .contains(&edge(&model, "service:flows/web", "aws:alb/orders-alb").expect("alb")["id"])
    );
    poll_until(Duration::from_secs(10), Duration::from_millis(500), "the refused connection", || {
        refused_edge(&get_json(map.addr, "/api/map?window=5m&errors=true")?)
    });
    let nodes: Vec<(String, String)> = model["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (n["id"].as_str().unwrap_or_default().to_string(), n["az"].as_str().unwrap_or("-").to_string())
        })
        .collect();
    for want in [
        ("service:flows/web", "us-east-1a"),
        ("service:flows/worker", "us-east-1b"),
        ("aws:alb/orders-alb", "us-east-1b"),
        ("aws:nat_gateway/nat-0a1b2c3d4e5f67890", "us-east-1b"),
    ] {
        assert!(nodes.contains(&(want.0.to_string(), want.1.to_string())), "{want:?} in {nodes:?}");
    }

    // The page, as a person sees it.
    if chromium().is_none() {
        return skip("chromium not installed (Debian package `chromium`; scripts/install-deps.sh test)");
    }
    let url = |q: &str| format!("http://{}/map?{q}", map.addr);
    let dom = render(&url("scope=cross-az"), "cluster-map.png");
    let worker_edge = "data-edge-id=\"".to_string()
        + edge(&model, "service:flows/web", "service:flows/worker").expect("edge")["id"]
            .as_str()
            .expect("id");
    let (up, down): (usize, usize) = (PLAN.iter().map(|p| p.0).sum(), PLAN.iter().map(|p| p.1).sum());
    assert_eq!(attr_of(&dom, "id=\"status\"", "data-state").as_deref(), Some("ok"), "{dom}");
    assert_eq!(attr_of(&dom, "id=\"status\"", "data-edges").as_deref(), Some("3"), "{dom}");
    assert_eq!(attr_of(&dom, &worker_edge, "data-bytes-c2s"), Some(up.to_string()), "{dom}");
    assert_eq!(attr_of(&dom, &worker_edge, "data-bytes-s2c"), Some(down.to_string()), "{dom}");
    assert_eq!(attr_of(&dom, &worker_edge, "data-connections"), Some(PLAN.len().to_string()), "{dom}");
    assert_eq!(attr_of(&dom, &worker_edge, "data-cross-az").as_deref(), Some("true"), "{dom}");
    let cost: Option<f64> = attr_of(&dom, &worker_edge, "data-cost-usd").and_then(|c| c.parse().ok());
    assert_eq!(cost, Some(usd((up + down) as u128 * CROSS_AZ_ATTO)), "{dom}");
    for (node, kind) in [
        ("aws:alb/orders-alb", "aws"),
        ("aws:nat_gateway/nat-0a1b2c3d4e5f67890", "aws"),
        ("service:flows/worker", "service"),
    ] {
        assert_eq!(
            attr_of(&dom, &format!("data-node-id=\"{node}\""), "data-kind").as_deref(),
            Some(kind),
            "{dom}"
        );
    }
    // The window's estimated cost, to the cent: 500 MB across zones × 2 × $0.01/GB (+ the NAT's few bytes).
    assert_eq!(text_of(&dom, "id=\"sum-cost\"").as_deref(), Some("$0.01"), "{dom}");
    let errors = render(&url("errors=true&view=table"), "cluster-map-errors.png");
    assert_eq!(attr_of(&errors, "id=\"status\"", "data-edges").as_deref(), Some("1"), "{errors}");
    let nat = render(&url("search=nat"), "cluster-map-nat.png");
    assert_eq!(attr_of(&nat, "id=\"status\"", "data-edges").as_deref(), Some("1"), "{nat}");
    assert!(nat.contains("data-server=\"aws:nat_gateway/nat-0a1b2c3d4e5f67890\""), "{nat}");
}
