//! ECS identity of the remote end through the ECS API: a moto server (the real ECS/EC2 API
//! model, driven here through the AWS CLI and inside the agent through aws-sdk-ecs/ec2) knows
//! a cluster `flows` (the cluster the fixture ECS agent reports) with an awsvpc task `api`
//! (RunTask gives it an ENI address) and a bridge task `web` on a container instance. Those
//! addresses are then created inside a test network namespace, and connections to them come
//! out with `remote.ecs` from the API. Throttling, 500s and access denied (injected by a relay
//! in front of moto) leave flows flowing, counted, and backed off.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::Duration;

use eddy_tests::aws::{MotoServer, Tools, cli_json};
use eddy_tests::ecs_fixture::{GOOD, introspection_fixture};
use eddy_tests::fault_proxy::{Fault, FaultProxy};
use eddy_tests::netns::{NetNs, join, veth_link};
use eddy_tests::*;
use serde_json::Value;

const REGION: &str = "us-east-1";
const INSTANCE_IP: &str = "10.0.1.10";

struct Cluster {
    api_ip: String,
}

/// Creates the cluster, a container instance, an awsvpc task and a bridge task in moto.
fn populate(tools: &Tools, endpoint: &str) -> Cluster {
    let aws = |args: &[&str]| cli_json(&tools.aws(endpoint, REGION, args).expect("aws cli against moto"));
    aws(&["ecs", "create-cluster", "--cluster-name", "flows"]);
    let vpc = aws(&["ec2", "create-vpc", "--cidr-block", "10.0.0.0/16"])["Vpc"]["VpcId"].clone();
    let vpc = vpc.as_str().expect("vpc");
    // moto's RunTask names the task ENI by its DNS name, which it only has with DNS hostnames on.
    aws(&["ec2", "modify-vpc-attribute", "--vpc-id", vpc, "--enable-dns-hostnames", r#"{"Value":true}"#]);
    let subnet = aws(&[
        "ec2",
        "create-subnet",
        "--vpc-id",
        vpc,
        "--cidr-block",
        "10.0.1.0/24",
        "--availability-zone",
        "us-east-1a",
    ])["Subnet"]["SubnetId"]
        .as_str()
        .expect("subnet")
        .to_string();
    let sg = aws(&[
        "ec2",
        "create-security-group",
        "--group-name",
        "tasks",
        "--description",
        "t",
        "--vpc-id",
        vpc,
    ])["GroupId"]
        .as_str()
        .expect("sg")
        .to_string();
    let instance = aws(&[
        "ec2",
        "run-instances",
        "--image-id",
        "ami-12c6146b",
        "--count",
        "1",
        "--subnet-id",
        &subnet,
        "--private-ip-address",
        INSTANCE_IP,
    ])["Instances"][0]["InstanceId"]
        .as_str()
        .expect("instance")
        .to_string();
    let doc = serde_json::json!({
        "instanceId": instance, "region": REGION, "availabilityZone": "us-east-1a", "privateIp": INSTANCE_IP
    })
    .to_string();
    let ci = aws(&[
        "ecs",
        "register-container-instance",
        "--cluster",
        "flows",
        "--instance-identity-document",
        &doc,
    ])["containerInstance"]["containerInstanceArn"]
        .as_str()
        .expect("container instance")
        .to_string();
    aws(&[
        "ecs",
        "register-task-definition",
        "--family",
        "api",
        "--network-mode",
        "awsvpc",
        "--memory",
        "512",
        "--container-definitions",
        r#"[{"name":"api","image":"api:2","memoryReservation":128,"portMappings":[{"containerPort":9000}]},
            {"name":"envoy","image":"envoy:1","memoryReservation":64}]"#,
    ]);
    aws(&[
        "ecs",
        "register-task-definition",
        "--family",
        "web",
        "--network-mode",
        "bridge",
        "--memory",
        "512",
        "--container-definitions",
        r#"[{"name":"nginx","image":"nginx:1","memoryReservation":128,"portMappings":[{"containerPort":80,"hostPort":8080}]}]"#,
    ]);
    let run = aws(&[
        "ecs",
        "run-task",
        "--cluster",
        "flows",
        "--task-definition",
        "api",
        "--launch-type",
        "EC2",
        "--group",
        "service:api-svc",
        "--network-configuration",
        &format!(r#"{{"awsvpcConfiguration":{{"subnets":["{subnet}"],"securityGroups":["{sg}"]}}}}"#),
    ]);
    let details = &run["tasks"][0]["attachments"][0]["details"];
    let api_ip = details
        .as_array()
        .and_then(|d| d.iter().find(|kv| kv["name"] == "privateIPv4Address"))
        .and_then(|kv| kv["value"].as_str())
        .unwrap_or_else(|| panic!("no ENI address in {run}"))
        .to_string();
    aws(&[
        "ecs",
        "start-task",
        "--cluster",
        "flows",
        "--task-definition",
        "web",
        "--container-instances",
        &ci,
    ]);
    Cluster { api_ip }
}

/// Accepts connections on `addr` inside `ns` and reads each to EOF, replying one byte.
fn serve(ns: &NetNs, addr: SocketAddr, n: usize) -> std::thread::JoinHandle<Vec<usize>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.spawn(move || {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        tx.send(()).expect("ready");
        (0..n)
            .map(|_| {
                let (mut s, _) = l.accept().expect("accept");
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).expect("read");
                s.write_all(b"k").expect("reply");
                buf.len()
            })
            .collect()
    });
    rx.recv().expect("server ready");
    h
}

fn connect_and_send(ns: &NetNs, to: SocketAddr, bytes: usize) -> u16 {
    ns.run(move || {
        let mut s =
            TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{to}: {e}"));
        let port = s.local_addr().expect("addr").port();
        s.write_all(&payload(bytes, 3)).expect("send");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut one = [0u8; 1];
        s.read_exact(&mut one).expect("reply");
        port
    })
}

fn closed_flow_to(agent: &RunAgent, local_port: u16) -> Result<Value, String> {
    let flows: Vec<Value> = serde_json::from_str(&agent.get("/flows").text()).map_err(|e| e.to_string())?;
    flows
        .into_iter()
        .find(|f| {
            f["local"]["port"] == local_port && f["direction"] == "outgoing" && !f["closed_at"].is_null()
        })
        .ok_or_else(|| format!("no closed flow from port {local_port} yet"))
}

fn counter(agent: &RunAgent, name: &str) -> u64 {
    agent.status()["ecs_api"]["errors"][name].as_u64().unwrap_or(0)
}

#[test]
fn remote_ends_are_named_from_the_ecs_api_and_api_faults_degrade_gracefully() {
    if !require_privileges() {
        return;
    }
    let tools = match Tools::find() {
        Ok(t) => t,
        Err(reason) => return skip(&reason),
    };
    let moto = MotoServer::start(&tools).expect("moto");
    let cluster = populate(&tools, &moto.endpoint);
    let moto_addr: SocketAddr = moto.endpoint.trim_start_matches("http://").parse().expect("moto addr");
    let proxy = FaultProxy::start(moto_addr);
    proxy.set(Fault::Throttle);

    // The client's namespace and the "VPC" namespace holding the task and instance addresses.
    let (client, vpc) = (NetNs::new("ecs-client"), NetNs::new("ecs-vpc"));
    let link = veth_link(&client, &vpc);
    for ip in [cluster.api_ip.as_str(), INSTANCE_IP] {
        vpc.ip(&["addr", "add", &format!("{ip}/32"), "dev", &link.b_if]);
        client.ip(&["route", "add", &format!("{ip}/32"), "via", &link.b_v4.to_string()]);
    }
    let api: SocketAddr = format!("{}:9000", cluster.api_ip).parse().expect("api addr");
    let instance_ssh: SocketAddr = format!("{INSTANCE_IP}:22").parse().expect("instance addr");
    let api_server = serve(&vpc, api, 2);
    let instance_server = serve(&vpc, instance_ssh, 1);

    let mode = Arc::new(AtomicU8::new(GOOD));
    let introspection = introspection_fixture(mode);
    let endpoint = proxy.endpoint();
    let agent = RunAgent::start_with_env(
        &[
            "--poll-interval",
            "200ms",
            "--ecs-agent-uri",
            &format!("http://{introspection}"),
            "--ecs-api-refresh-interval",
            "300ms",
            "--closed-flow-retention",
            "100000",
        ],
        &[("AWS_ENDPOINT_URL", endpoint.as_str()), ("AWS_REGION", REGION)],
    );

    // 1. Throttled: counted and backed off; flows are exported all the same, without remote labels.
    poll_until(Duration::from_secs(30), Duration::from_millis(200), "throttling counted", || {
        let n = counter(&agent, "throttled");
        if n > 0 { Ok(()) } else { Err(format!("status {}", agent.status()["ecs_api"])) }
    });
    let port = connect_and_send(&client, api, 1_000);
    let f = poll_until(Duration::from_secs(10), Duration::from_millis(200), "flow while throttled", || {
        closed_flow_to(&agent, port)
    });
    assert_eq!(f["bytes_sent"], 1_000, "{f}");
    // The server is a process on this host outside any container: the peer flow says so; no task yet.
    assert_eq!(f["remote"]["ecs"]["container_name"], "host", "{f}");
    assert!(f["remote"]["ecs"]["task_family"].is_null(), "no API answer yet, no task: {f}");
    let before = proxy.total();
    std::thread::sleep(Duration::from_secs(3));
    let during = proxy.total() - before;
    // Unthrottled, 3 s at 300 ms would be 10 refreshes of 1 ListTasks each; the SDK's retries and the
    // agent's doubling wait keep it well below that.
    assert!(during <= 9, "{during} requests in 3 s while throttled: {:?}", proxy.counts());

    // 2. A server error: counted as an API error.
    proxy.set(Fault::ServerError);
    poll_until(Duration::from_secs(30), Duration::from_millis(200), "500 counted", || {
        let n = counter(&agent, "errors");
        if n > 0 { Ok(()) } else { Err(format!("status {}", agent.status()["ecs_api"])) }
    });

    // 3. Good answers: the cluster's two tasks and one instance are indexed.
    proxy.set(Fault::Pass);
    let status = poll_until(Duration::from_secs(40), Duration::from_millis(200), "a good refresh", || {
        let s = agent.status()["ecs_api"].clone();
        if s["tasks"] == 2 && s["container_instances"] == 1 { Ok(s) } else { Err(s.to_string()) }
    });
    assert_eq!((status["cluster"].as_str(), status["region"].as_str()), (Some("flows"), Some(REGION)));
    let calls = proxy.counts();
    for op in
        ["AmazonEC2ContainerServiceV20141113.ListTasks", "AmazonEC2ContainerServiceV20141113.DescribeTasks"]
    {
        assert!(calls.contains_key(op), "{op} not called: {calls:?}");
    }

    // The awsvpc task's ENI address: task, service, container by port.
    let port = connect_and_send(&client, api, 2_345);
    let f = poll_until(Duration::from_secs(10), Duration::from_millis(200), "flow to the api task", || {
        closed_flow_to(&agent, port)
    });
    assert_eq!(f["bytes_sent"], 2_345, "{f}");
    let r = &f["remote"]["ecs"];
    assert_eq!(r["cluster"], "flows", "{f}");
    assert_eq!((r["task_family"].as_str(), r["task_revision"].as_str()), (Some("api"), Some("1")), "{f}");
    assert_eq!(r["service"], "api-svc", "{f}");
    assert_eq!(r["container_name"], "api", "the container whose port is 9000: {f}");
    assert_eq!(r["network_mode"], "awsvpc", "{f}");
    assert_eq!(r["launch_type"], "EC2", "{f}");
    assert!(r["task_arn"].as_str().is_some_and(|a| a.contains(":task/")), "{f}");

    // The container instance's own address (no host-port binding): a host of the cluster, with its AZ.
    let port = connect_and_send(&client, instance_ssh, 10);
    let f = poll_until(Duration::from_secs(10), Duration::from_millis(200), "flow to the instance", || {
        closed_flow_to(&agent, port)
    });
    let r = &f["remote"]["ecs"];
    assert_eq!((r["container_name"].as_str(), r["cluster"].as_str()), (Some("host"), Some("flows")), "{f}");
    assert_eq!(r["availability_zone"], "us-east-1a", "{f}");
    assert_eq!(join(api_server), vec![1_000, 2_345]);
    assert_eq!(join(instance_server), vec![10]);

    // 4. Access denied: one clear line naming the IAM action; the last index stays in use.
    proxy.set(Fault::AccessDenied);
    poll_until(Duration::from_secs(30), Duration::from_millis(200), "access denied counted", || {
        let n = counter(&agent, "access_denied");
        if n > 0 { Ok(()) } else { Err(format!("status {}", agent.status()["ecs_api"])) }
    });
    let log = agent.log_tail(200);
    // The fault may land between two calls of one refresh: the line names whichever action was
    // refused first (ListTasks when it lands between refreshes; the instances' ec2:DescribeInstances
    // when it lands in the middle of one).
    assert!(
        ["ecs:", "ec2:DescribeInstances"]
            .iter()
            .any(|a| log.contains(&format!("Grant the agent's task role the IAM action {a}"))),
        "no clear access-denied line: {log}"
    );
    assert_eq!(agent.status()["ecs_api"]["tasks"], 2, "the last good index stays");
    assert_eq!(agent.get("/healthz").status, 200);
}
