use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use eddy_tests::imds_fixture::Imds;

use super::*;

#[tokio::test]
async fn reads_the_identity_with_a_session_token() {
    let imds =
        Imds::start(Imds::instance("us-east-1b", "vpc-0aa1", "subnet-0bb2", &["10.0.0.0/16", "10.1.0.0/16"]));
    let id = fetch(Some(&imds.endpoint), Duration::from_secs(2)).await.expect("identity");
    assert_eq!(id.region.as_deref(), Some("us-east-1"));
    assert_eq!(
        (id.availability_zone.as_deref(), id.availability_zone_id.as_deref()),
        (Some("us-east-1b"), Some("use1-az2"))
    );
    assert_eq!(id.instance_id.as_deref(), Some("i-0123456789abcdef0"));
    assert_eq!((id.vpc_id.as_deref(), id.subnet_id.as_deref()), (Some("vpc-0aa1"), Some("subnet-0bb2")));
    assert_eq!(id.vpc_cidrs, vec!["10.0.0.0/16".to_string(), "10.1.0.0/16".to_string()]);
    assert_eq!(imds.refused(), 0, "every GET carried the token");
}

#[test]
fn a_get_without_the_token_is_refused_by_the_fixture() {
    let imds = Imds::start(Imds::instance("us-east-1b", "vpc-0aa1", "subnet-0bb2", &[]));
    let mut s = std::net::TcpStream::connect(imds.endpoint.trim_start_matches("http://")).expect("connect");
    s.write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).expect("read");
    assert!(line.starts_with("HTTP/1.1 401"), "{line}");
    assert_eq!(imds.refused(), 1);
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

/// An IMDS that answers the token and then every GET with `body_len` bytes.
fn imds_with_body(body_len: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut req = String::new();
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let _ = r.read_line(&mut req);
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let body = if req.starts_with("PUT") { "token".to_string() } else { "a".repeat(body_len) };
            let _ =
                write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(body.as_bytes());
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn oversized_imds_answers_are_refused_and_counted_by_kind() {
    let e = fetch(Some(&imds_with_body(IMDS_MAX_BYTES + 1)), Duration::from_secs(2))
        .await
        .expect_err("over the cap");
    assert!(matches!(e, IdentityError::TooLarge { limit: IMDS_MAX_BYTES, .. }), "{e}");
    assert_eq!(e.kind(), "imds_oversized_responses");
    let id = fetch(Some(&imds_with_body(IMDS_MAX_BYTES)), Duration::from_secs(2)).await.expect("at the cap");
    assert_eq!(id.availability_zone.map(|z| z.len()), Some(IMDS_MAX_BYTES));
}
