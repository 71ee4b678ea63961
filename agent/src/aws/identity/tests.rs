use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

const TOKEN: &str = "AQAEAFakeTokenForTestsOnly==";
const MAC: &str = "0e:49:61:0f:c3:11";

/// IMDSv2 as AWS documents it: `PUT /latest/api/token` (with a TTL header) returns a token; every GET
/// must carry it in `X-aws-ec2-metadata-token`, else 401. Counts the GETs refused.
fn imds_fixture(refused: Arc<AtomicU64>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let refused = refused.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream.try_clone().expect("clone"));
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) =
                        (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
                    let (mut token, mut ttl, mut len) = (None, None, 0usize);
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                        let (k, v) = h
                            .split_once(':')
                            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
                            .unwrap_or_default();
                        match k.as_str() {
                            "x-aws-ec2-metadata-token" => token = Some(v),
                            "x-aws-ec2-metadata-token-ttl-seconds" => ttl = Some(v),
                            "content-length" => len = v.parse().unwrap_or(0),
                            _ => {}
                        }
                    }
                    let mut body = vec![0; len];
                    let _ = r.read_exact(&mut body);
                    let md = |p: &str| -> Option<&'static str> {
                        Some(match p {
                            "/latest/meta-data/placement/availability-zone" => "us-east-1b",
                            "/latest/meta-data/placement/region" => "us-east-1",
                            "/latest/meta-data/placement/availability-zone-id" => "use1-az2",
                            "/latest/meta-data/instance-id" => "i-0123456789abcdef0",
                            "/latest/meta-data/mac" => MAC,
                            _ if p == format!("/latest/meta-data/network/interfaces/macs/{MAC}/vpc-id") => {
                                "vpc-0aa1"
                            }
                            _ if p
                                == format!("/latest/meta-data/network/interfaces/macs/{MAC}/subnet-id") =>
                            {
                                "subnet-0bb2"
                            }
                            _ if p
                                == format!(
                                    "/latest/meta-data/network/interfaces/macs/{MAC}/vpc-ipv4-cidr-blocks"
                                ) =>
                            {
                                "10.0.0.0/16\n10.1.0.0/16"
                            }
                            _ => return None,
                        })
                    };
                    // The token response echoes its TTL, as IMDS does.
                    let ttl_header = ttl
                        .as_ref()
                        .map(|t| format!("X-aws-ec2-metadata-token-ttl-seconds: {t}\r\n"))
                        .unwrap_or_default();
                    let (status, text) = match (method.as_str(), path.as_str()) {
                        ("PUT", "/latest/api/token") if ttl.is_some() => (200, TOKEN.to_string()),
                        ("PUT", _) => (400, String::new()),
                        ("GET", p) if token.as_deref() != Some(TOKEN) => {
                            refused.fetch_add(1, Ordering::SeqCst);
                            let _ = p;
                            (401, String::new())
                        }
                        ("GET", p) => match md(p) {
                            Some(v) => (200, v.to_string()),
                            None => (404, String::new()),
                        },
                        _ => (405, String::new()),
                    };
                    let mut s = &stream;
                    if write!(
                        s,
                        "HTTP/1.1 {status} X\r\n{ttl_header}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
                        text.len()
                    )
                    .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn reads_the_identity_with_a_session_token() {
    let refused = Arc::new(AtomicU64::new(0));
    let endpoint = imds_fixture(refused.clone());
    let id = fetch(Some(&endpoint), Duration::from_secs(2)).await.expect("identity");
    assert_eq!(id.region.as_deref(), Some("us-east-1"));
    assert_eq!(
        (id.availability_zone.as_deref(), id.availability_zone_id.as_deref()),
        (Some("us-east-1b"), Some("use1-az2"))
    );
    assert_eq!(id.instance_id.as_deref(), Some("i-0123456789abcdef0"));
    assert_eq!((id.vpc_id.as_deref(), id.subnet_id.as_deref()), (Some("vpc-0aa1"), Some("subnet-0bb2")));
    assert_eq!(id.vpc_cidrs, vec!["10.0.0.0/16".to_string(), "10.1.0.0/16".to_string()]);
    assert_eq!(refused.load(Ordering::SeqCst), 0, "every GET carried the token");
}

#[test]
fn a_get_without_the_token_is_refused_by_the_fixture() {
    let refused = Arc::new(AtomicU64::new(0));
    let endpoint = imds_fixture(refused.clone());
    let mut s = std::net::TcpStream::connect(endpoint.trim_start_matches("http://")).expect("connect");
    s.write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).expect("read");
    assert!(line.starts_with("HTTP/1.1 401"), "{line}");
    assert_eq!(refused.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unreachable_imds_is_a_clear_error() {
    let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let e = fetch(Some(&format!("http://127.0.0.1:{port}")), Duration::from_millis(300))
        .await
        .expect_err("nothing listens");
    assert!(e.to_string().contains("host networking"), "{e}");
}

#[test]
fn imds_is_called_only_where_it_makes_sense() {
    let env = |kv: &[(&str, &str)]| {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>()
    };
    assert!(matches!(imds_decision(&env(&[]), false), ImdsDecision::Skip { .. }), "a laptop");
    assert!(matches!(imds_decision(&env(&[]), true), ImdsDecision::Call { .. }));
    let configured = env(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:1338")]);
    assert!(matches!(imds_decision(&configured, false), ImdsDecision::Call { .. }));
    let disabled =
        env(&[("AWS_EC2_METADATA_DISABLED", "TRUE"), ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://x")]);
    assert!(matches!(imds_decision(&disabled, true), ImdsDecision::Skip { .. }), "disabled wins");
}

#[test]
fn dmi_vendor_or_uuid() {
    let root = std::env::temp_dir().join(format!("eddy-dmi-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("mkdir");
    assert!(!dmi_is_ec2(&root), "no DMI");
    std::fs::write(root.join("sys_vendor"), "QEMU\n").expect("write");
    assert!(!dmi_is_ec2(&root));
    std::fs::write(root.join("product_uuid"), "EC2E1916-9099-7CAF-FD21-012345678912\n").expect("write");
    assert!(dmi_is_ec2(&root), "Xen-based instances");
    std::fs::remove_file(root.join("product_uuid")).expect("rm");
    std::fs::write(root.join("sys_vendor"), "Amazon EC2\n").expect("write");
    assert!(dmi_is_ec2(&root), "Nitro instances");
    std::fs::remove_dir_all(root).ok();
}
