//! Enhanced resolution against moto (the real EC2 API model, through the real aws-sdk-ec2): a VPC
//! with subnets in two zones and ENIs carrying the descriptions AWS services write (moto fakes
//! interface types and requester ids, so classification must work from the descriptions), an EC2
//! instance with a Name tag, and a second VPC. This host's identity comes from an IMDSv2 fixture.
//! Those addresses are created inside a test namespace; connections to them come out with
//! `remote.aws` and `scope`. Then 10,000 distinct addresses in a burst cost a bounded number of API
//! calls, counted at the API endpoint.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use eddy_tests::aws::{MotoServer, Tools, cli_json};
use eddy_tests::fault_proxy::{Fault, FaultProxy};
use eddy_tests::imds_fixture::Imds;
use eddy_tests::netns::{NetNs, veth_link};
use eddy_tests::*;
use serde_json::Value;

const REGION: &str = "us-east-1";

/// (address, port, expected kind, expected name, expected zone, expected scope)
type Case = (&'static str, u16, &'static str, Option<&'static str>, Option<&'static str>, &'static str);

const CASES: &[Case] = &[
    ("10.0.1.20", 443, "alb", Some("my-public-alb"), Some("us-east-1a"), "same-az"),
    ("10.0.2.21", 443, "nat_gateway", Some("nat-0a1b2c3d4e5f67890"), Some("us-east-1b"), "cross-az"),
    ("10.0.2.22", 443, "vpc_endpoint", Some("vpce-0123456789abcdef0"), Some("us-east-1b"), "cross-az"),
    ("10.0.1.23", 8080, "lambda", Some("resize-images"), Some("us-east-1a"), "same-az"),
    ("10.0.1.24", 5432, "ec2_instance", Some("db-1"), Some("us-east-1a"), "same-az"),
    ("172.31.0.5", 443, "nlb", Some("other-nlb"), Some("us-east-1a"), "cross-vpc"),
];

/// Creates the VPCs, subnets, ENIs and instance; returns this host's VPC id.
fn populate(tools: &Tools, endpoint: &str) -> String {
    let aws = |args: &[&str]| cli_json(&tools.aws(endpoint, REGION, args).expect("aws cli against moto"));
    let vpc = aws(&["ec2", "create-vpc", "--cidr-block", "10.0.0.0/16"])["Vpc"]["VpcId"]
        .as_str()
        .expect("vpc")
        .to_string();
    let other = aws(&["ec2", "create-vpc", "--cidr-block", "172.31.0.0/16"])["Vpc"]["VpcId"]
        .as_str()
        .expect("vpc")
        .to_string();
    let subnet = |vpc: &str, cidr: &str, az: &str| {
        aws(&["ec2", "create-subnet", "--vpc-id", vpc, "--cidr-block", cidr, "--availability-zone", az])["Subnet"]["SubnetId"]
            .as_str()
            .expect("subnet")
            .to_string()
    };
    let (a, b, o) = (
        subnet(&vpc, "10.0.1.0/24", "us-east-1a"),
        subnet(&vpc, "10.0.2.0/24", "us-east-1b"),
        subnet(&other, "172.31.0.0/24", "us-east-1a"),
    );
    let eni = |subnet: &str, ip: &str, description: &str| {
        aws(&[
            "ec2",
            "create-network-interface",
            "--subnet-id",
            subnet,
            "--private-ip-address",
            ip,
            "--description",
            description,
        ]);
    };
    eni(&a, "10.0.1.20", "ELB app/my-public-alb/50dc6c495c0c9188");
    eni(&b, "10.0.2.21", "Interface for NAT Gateway nat-0a1b2c3d4e5f67890");
    eni(&b, "10.0.2.22", "VPC Endpoint Interface vpce-0123456789abcdef0");
    eni(&a, "10.0.1.23", "AWS Lambda VPC ENI-resize-images-3f2a1b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b");
    eni(&o, "172.31.0.5", "ELB net/other-nlb/7b1b8f2c3d4e5f60");
    aws(&[
        "ec2",
        "run-instances",
        "--image-id",
        "ami-12c6146b",
        "--count",
        "1",
        "--subnet-id",
        &a,
        "--private-ip-address",
        "10.0.1.24",
        "--tag-specifications",
        "ResourceType=instance,Tags=[{Key=Name,Value=db-1}]",
    ]);
    vpc
}

fn serve_once(ns: &NetNs, addr: SocketAddr) -> std::thread::JoinHandle<usize> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.spawn(move || {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        tx.send(()).expect("ready");
        let (mut s, _) = l.accept().expect("accept");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).expect("read");
        s.write_all(b"k").expect("reply");
        buf.len()
    });
    rx.recv().expect("server ready");
    h
}

/// moto with the cases' ENIs (behind a fault proxy), an IMDS fixture for this host, and two
/// namespaces: `client` routes the cases' addresses to `vpc_ns`, which holds them.
struct World {
    _moto: MotoServer,
    proxy: FaultProxy,
    imds: Imds,
    vpc: String,
    client: NetNs,
    vpc_ns: NetNs,
}

impl World {
    /// `None` (after printing why) when the AWS tools are missing.
    fn build() -> Option<World> {
        let tools = match Tools::find() {
            Ok(t) => t,
            Err(reason) => {
                skip(&reason);
                return None;
            }
        };
        let moto = MotoServer::start(&tools).expect("moto");
        let vpc = populate(&tools, &moto.endpoint);
        let proxy =
            FaultProxy::start(moto.endpoint.trim_start_matches("http://").parse().expect("moto addr"));
        let imds = Imds::start(Imds::instance("us-east-1a", &vpc, "subnet-host", &["10.0.0.0/16"]));
        let (client, vpc_ns) = (NetNs::new("aws-client"), NetNs::new("aws-vpc"));
        let link = veth_link(&client, &vpc_ns);
        let via = link.b_v4.to_string();
        for (ip, ..) in CASES {
            vpc_ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", &link.b_if]);
            client.ip(&["route", "add", &format!("{ip}/32"), "via", &via]);
        }
        // A public address (documentation range), and a block for the burst: both only inside these namespaces.
        vpc_ns.ip(&["addr", "add", "203.0.113.10/32", "dev", &link.b_if]);
        client.ip(&["route", "add", "203.0.113.10/32", "via", &via]);
        client.ip(&["route", "add", "10.0.128.0/17", "via", &via]);
        Some(World { _moto: moto, proxy, imds, vpc, client, vpc_ns })
    }

    /// The agent's AWS environment: the API through the fault proxy, IMDS at the fixture.
    fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.proxy.endpoint()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_EC2_METADATA_DISABLED", "false".to_string()),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", self.imds.endpoint.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// One connection from `client` to `addr` in `vpc_ns`: 100 bytes up, 1 back.
    fn connect(&self, addr: SocketAddr) {
        let server = serve_once(&self.vpc_ns, addr);
        self.client.run(move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
            s.write_all(&[1u8; 100]).expect("send");
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            let mut one = [0u8; 1];
            s.read_exact(&mut one).expect("reply");
        });
        assert_eq!(server.join().expect("server"), 100);
    }
}

/// The cases' targets and the public address.
fn targets() -> Vec<(SocketAddr, &'static Case)> {
    const PUBLIC: Case = ("203.0.113.10", 443, "-", None, None, "internet");
    CASES
        .iter()
        .chain(std::iter::once(&PUBLIC))
        .map(|c| (SocketAddr::new(c.0.parse().expect("ip"), c.1), c))
        .collect()
}

/// Checks a flow record against its case.
fn check_case(f: &Value, (_, _, kind, name, az, scope): &Case) {
    assert_eq!(f["scope"], *scope, "{f}");
    if *kind == "-" {
        assert!(f["remote"].get("aws").is_none(), "no API call for a public address: {f}");
        return;
    }
    let a = &f["remote"]["aws"];
    assert_eq!(a["kind"], *kind, "{f}");
    assert_eq!(a["name"].as_str(), *name, "{f}");
    assert_eq!(a["availability_zone"].as_str(), *az, "{f}");
}

#[test]
fn remote_addresses_are_named_with_zone_and_scope_at_bounded_api_cost() {
    if !require_privileges() {
        return;
    }
    let Some(w) = World::build() else { return };
    let (proxy, imds, vpc, client) = (&w.proxy, &w.imds, &w.vpc, &w.client);
    let env = w.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let agent = RunAgent::start_with_env(
        &[
            "--poll-interval",
            "200ms",
            "--aws-api-calls-per-second",
            "50",
            "--closed-flow-retention",
            "100000",
            "--export-interval",
            "1s",
        ],
        &env,
    );
    let status =
        poll_until(Duration::from_secs(30), Duration::from_millis(200), "the identity from IMDS", || {
            let s = agent.status()["aws"].clone();
            if s["identity"]["vpc_id"] == vpc.as_str() { Ok(s) } else { Err(s.to_string()) }
        });
    assert_eq!(status["identity"]["availability_zone"], "us-east-1a", "{status}");
    assert_eq!(imds.refused(), 0, "IMDSv2: every GET carried the session token");

    let targets = targets();
    // First contact queues the address; the flows come out labelled once it is resolved (the second
    // connection to each address at the latest).
    for round in 0..2 {
        for (addr, _) in &targets {
            w.connect(*addr);
        }
        if round == 0 {
            poll_until(Duration::from_secs(30), Duration::from_millis(200), "first lookups answered", || {
                let r = agent.status()["aws"]["resolver"].clone();
                // Every case is a known ENI: all of them found.
                let done = r["addresses_resolved"].as_u64().unwrap_or(0);
                if done >= CASES.len() as u64 { Ok(()) } else { Err(r.to_string()) }
            });
        }
    }
    for (addr, case) in &targets {
        let kind = case.2;
        // The later connection carries the answer (the first one only queued the address).
        let f = poll_until(Duration::from_secs(30), Duration::from_millis(200), "a labelled flow", || {
            let flows: Vec<Value> =
                serde_json::from_str(&agent.get("/flows").text()).map_err(|e| e.to_string())?;
            flows
                .into_iter()
                .find(|f| {
                    f["remote"]["addr"] == addr.ip().to_string()
                        && f["remote"]["port"] == addr.port()
                        && f["direction"] == "outgoing"
                        && if kind == "-" { !f["scope"].is_null() } else { f["remote"].get("aws").is_some() }
                })
                .ok_or_else(|| format!("no flow to {addr} with a scope yet; {}", agent.status()["aws"]))
        });
        check_case(&f, case);
    }
    // The connections to the NAT gateway and the endpoint in us-east-1b cross zones: each sends 100
    // bytes and receives 1 from an AWS-managed peer, counted once, priced from the defaults (101 B × 2
    // × $0.01/GB; NAT processing 101 B × $0.045/GB). The first round is labelled only if the lookup
    // answered before it closed: the expected totals are n × those of one connection, n = the closed
    // flows to the address that carry the resource (what was counted is what /flows shows).
    let labelled = |ip: &str, kind: &str| -> u64 {
        let flows: Vec<Value> = serde_json::from_str(&agent.get("/flows").text()).expect("/flows");
        flows
            .iter()
            .filter(|f| {
                f["remote"]["addr"] == ip
                    && f["direction"] == "outgoing"
                    && !f["closed_at"].is_null()
                    && f["remote"]["aws"]["kind"] == kind
                    && f["scope"] == "cross-az"
            })
            .count() as u64
    };
    // Exact decimal of an amount in atto-USD (10^-18), as /metrics prints it.
    let usd = |atto: u128| {
        let frac = format!("{:018}", atto % 1_000_000_000_000_000_000);
        format!("{}.{}", atto / 1_000_000_000_000_000_000, frac.trim_end_matches('0'))
    };
    const CROSS_AZ_ATTO: u128 = 101 * 2 * 10_000_000; // 101 B × 2 sides × 10^7 nano-USD/GB
    const NAT_ATTO: u128 = 101 * 45_000_000; // 101 B × 4.5 × 10^7 nano-USD/GB
    let pair = |name: &str, kind: &str| {
        format!(
            "local_az=\"us-east-1a\",remote_workload=\"{name}\",remote_kind=\"{kind}\",remote_az=\"us-east-1b\""
        )
    };
    let (nat, vpce) =
        (pair("nat-0a1b2c3d4e5f67890", "nat_gateway"), pair("vpce-0123456789abcdef0", "vpc_endpoint"));
    let counts = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(300),
        "priced cross-AZ transfer in /metrics",
        || {
            let (n_nat, n_vpce) =
                (labelled("10.0.2.21", "nat_gateway"), labelled("10.0.2.22", "vpc_endpoint"));
            if n_nat == 0 || n_vpce == 0 {
                return Err(format!("labelled flows: NAT {n_nat}, endpoint {n_vpce}"));
            }
            let mut want = Vec::new();
            for (p, n) in [(&nat, n_nat), (&vpce, n_vpce)] {
                let cost = usd(u128::from(n) * CROSS_AZ_ATTO);
                want.push(format!(
                    "eddy_cross_az_bytes_total{{{p},transfer=\"sent\",billed=\"true\"}} {}",
                    100 * n
                ));
                want.push(format!(
                    "eddy_cross_az_bytes_total{{{p},transfer=\"received\",billed=\"true\"}} {n}"
                ));
                want.push(format!(
                    "eddy_estimated_transfer_cost_usd_total{{{p},charge=\"cross_az\"}} {cost}"
                ));
            }
            want.push(format!("eddy_nat_gateway_bytes_total{{{nat}}} {}", 101 * n_nat));
            let nat_cost = usd(u128::from(n_nat) * NAT_ATTO);
            want.push(format!(
                "eddy_estimated_transfer_cost_usd_total{{{nat},charge=\"nat_gateway\"}} {nat_cost}"
            ));
            let text = agent.get("/metrics").text();
            let missing: Vec<&String> =
                want.iter().filter(|w| !text.lines().any(|l| l == w.as_str())).collect();
            let transfer: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.starts_with("eddy_cross_az")
                        || l.starts_with("eddy_nat")
                        || l.starts_with("eddy_estimated")
                })
                .collect();
            if missing.is_empty() {
                Ok((n_nat, n_vpce))
            } else {
                Err(format!("missing {missing:#?} in {transfer:#?}"))
            }
        },
    );
    // The service map prices the same edges (both cross-AZ, 100 B up and 1 B down per connection).
    let map: serde_json::Value = serde_json::from_str(&agent.get("/api/map?window=5m&scope=cross-az").text())
        .expect("/api/map answers JSON");
    for (server, n, atto) in [
        ("aws:nat_gateway/nat-0a1b2c3d4e5f67890", counts.0, CROSS_AZ_ATTO + NAT_ATTO),
        ("aws:vpc_endpoint/vpce-0123456789abcdef0", counts.1, CROSS_AZ_ATTO),
    ] {
        let edges = map["edges"].as_array().expect("edges");
        let e = edges
            .iter()
            .find(|e| e["server"] == server)
            .unwrap_or_else(|| panic!("no edge to {server}: {map:#}"));
        let got =
            (&e["bytes_client_to_server"], &e["bytes_server_to_client"], &e["connections"], &e["cross_az"]);
        assert_eq!(got, (&(100 * n).into(), &n.into(), &n.into(), &true.into()), "{e:#}");
        let cost = (u128::from(n) * atto) as f64 / 1e18;
        assert_eq!(e["cost_usd"].as_f64(), Some(cost), "{e:#}");
        assert!(
            map["tables"]["top_cross_az_cost"].as_array().is_some_and(|t| t.contains(&e["id"])),
            "{map:#}"
        );
    }
    let calls_before = proxy.total();
    assert!(calls_before >= 1, "{:?}", proxy.counts());
    let queued_before = agent.status()["aws"]["resolver"]["queued"].as_u64().unwrap_or(0);

    // 10,000 distinct addresses in a burst (one UDP datagram each): bounded API calls, batches of 100.
    client.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0").expect("udp");
        for i in 0..10_000u32 {
            let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 0, 128, 0)) + i);
            let _ = s.send_to(b"x", (ip, 9));
        }
    });
    let r = poll_until(Duration::from_secs(60), Duration::from_millis(500), "the burst resolved", || {
        let r = agent.status()["aws"]["resolver"].clone();
        let done = r["addresses_not_found"].as_u64().unwrap_or(0) + r["queue_dropped"].as_u64().unwrap_or(0);
        if done >= 10_000 { Ok(r) } else { Err(r.to_string()) }
    });
    let burst_calls = proxy.total() - calls_before;
    // Every address queued costs 1/100 of a call (DescribeNetworkInterfaces; no instance lookups here).
    // Counted from the resolver's own queue (the host's other traffic may add a few addresses). A batch
    // goes out when the queue has 100 or when it drains, so the datagrams' arrival over several polls may
    // cost a few partial batches: allow 10 (one call per address would be 10,000).
    let queued = r["queued"].as_u64().unwrap_or(0) - queued_before;
    assert!(queued >= 10_000 - r["queue_dropped"].as_u64().unwrap_or(0), "{r}");
    assert!(burst_calls <= queued.div_ceil(100) + 10, "{burst_calls} calls for {queued} addresses: {r}");
    assert_eq!(agent.get("/healthz").status, 200);

    // Faults at the API endpoint: counted, backed off, and access denied switches resolution off with
    // one line naming the IAM action. Flows keep flowing throughout.
    let poke = |third: u8, n: u8| {
        client.run(move || {
            let s = UdpSocket::bind("0.0.0.0:0").expect("udp");
            for i in 1..=n {
                let _ = s.send_to(b"x", (std::net::Ipv4Addr::new(10, 0, third, i), 9));
            }
        })
    };
    let error_count = |kind: &str| agent.status()["aws"]["resolver"]["errors"][kind].as_u64().unwrap_or(0);
    for (fault, third, kind) in [(Fault::Throttle, 200, "throttled"), (Fault::ServerError, 201, "errors")] {
        proxy.set(fault);
        poke(third, 3);
        poll_until(Duration::from_secs(60), Duration::from_millis(300), kind, || {
            if error_count(kind) > 0 { Ok(()) } else { Err(agent.status()["aws"].to_string()) }
        });
    }
    proxy.set(Fault::AccessDenied);
    poke(202, 3);
    let off = poll_until(Duration::from_secs(60), Duration::from_millis(300), "resolution off", || {
        let r = agent.status()["aws"]["resolver"].clone();
        if r["disabled"].is_string() { Ok(r) } else { Err(r.to_string()) }
    });
    assert!(off["disabled"].as_str().is_some_and(|d| d.contains("ec2:DescribeNetworkInterfaces")), "{off}");
    assert!(
        agent
            .log_tail(300)
            .contains("Grant the agent's task role the IAM action ec2:DescribeNetworkInterfaces")
    );
    let calls = proxy.total();
    poke(203, 50);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(proxy.total(), calls, "no API calls once access is denied");
    let flows: Vec<Value> = serde_json::from_str(&agent.get("/flows").text()).expect("flows");
    assert!(
        flows.iter().any(|f| f["remote"]["addr"] == "10.0.203.50" && f["bytes_sent"] == 1),
        "flows are unaffected by the resolver's state"
    );
}

/// `capture` runs the same pipeline as `run`: enhanced resolution starts before the window, the
/// window's first connections queue their addresses, and the records printed at the end carry
/// `remote.aws` and `scope` (before, resolution started after the window: none had them).
#[test]
fn capture_output_carries_remote_aws_and_scope() {
    if !require_privileges() {
        return;
    }
    let Some(w) = World::build() else { return };
    let mut opts = CaptureOptions::new(Duration::from_secs(8));
    opts.poll_interval = Some(Duration::from_millis(200));
    opts.extra_args = vec!["--aws-api-calls-per-second".into(), "50".into()];
    opts.env = w.env();
    let capture = Capture::start_with(opts);
    let targets = targets();
    for (addr, _) in &targets {
        w.connect(*addr);
    }
    capture.assert_window_open("the connections");
    let records = capture.finish_json();
    for (addr, case) in &targets {
        let f = records
            .iter()
            .find(|f| {
                f["remote"]["addr"] == addr.ip().to_string()
                    && f["remote"]["port"] == addr.port()
                    && f["direction"] == "outgoing"
            })
            .unwrap_or_else(|| panic!("no record of the connection to {addr} in {} records", records.len()));
        assert_eq!((f["bytes_sent"].as_u64(), f["bytes_received"].as_u64()), (Some(100), Some(1)), "{f}");
        check_case(f, case);
    }
}
