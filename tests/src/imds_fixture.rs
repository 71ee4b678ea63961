//! IMDSv2 as AWS documents it, on loopback: `PUT /latest/api/token` with
//! `X-aws-ec2-metadata-token-ttl-seconds` returns a session token (and echoes the TTL); every
//! `GET` must carry it in `X-aws-ec2-metadata-token`, else 401. Serves the metadata given.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const TOKEN: &str = "AQAEAFakeTokenForTestsOnly==";

/// A running fixture.
pub struct Imds {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    refused: Arc<AtomicU64>,
}

impl Imds {
    /// Serves `metadata` (path under `/latest/meta-data/` → value).
    pub fn start(metadata: HashMap<String, String>) -> Imds {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind IMDS fixture");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let refused = Arc::new(AtomicU64::new(0));
        let (md, count) = (Arc::new(metadata), refused.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (md, count) = (md.clone(), count.clone());
                std::thread::spawn(move || serve(stream, &md, &count));
            }
        });
        Imds { endpoint, refused }
    }

    /// GETs refused for a missing or wrong token.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// The metadata of an instance: `vpc`, `subnet`, zone, and the VPC's IPv4 CIDRs.
    pub fn instance(az: &str, vpc: &str, subnet: &str, cidrs: &[&str]) -> HashMap<String, String> {
        let mac = "0e:49:61:0f:c3:11";
        let region = az.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let net = format!("network/interfaces/macs/{mac}");
        [
            ("placement/availability-zone".to_string(), az.to_string()),
            ("placement/region".into(), region.into()),
            ("placement/availability-zone-id".into(), "use1-az2".into()),
            ("instance-id".into(), "i-0123456789abcdef0".into()),
            ("mac".into(), mac.into()),
            (format!("{net}/vpc-id"), vpc.into()),
            (format!("{net}/subnet-id"), subnet.into()),
            (format!("{net}/vpc-ipv4-cidr-blocks"), cidrs.join("\n")),
        ]
        .into_iter()
        .collect()
    }
}

fn serve(stream: std::net::TcpStream, md: &HashMap<String, String>, refused: &AtomicU64) {
    let Ok(clone) = stream.try_clone() else { return };
    let mut r = BufReader::new(clone);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
        let (mut token, mut ttl, mut len) = (None, None, 0usize);
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let v = v.trim().to_string();
                match k.to_ascii_lowercase().as_str() {
                    "x-aws-ec2-metadata-token" => token = Some(v),
                    "x-aws-ec2-metadata-token-ttl-seconds" => ttl = Some(v),
                    "content-length" => len = v.parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let ttl_header = ttl
            .as_ref()
            .map(|t| format!("X-aws-ec2-metadata-token-ttl-seconds: {t}\r\n"))
            .unwrap_or_default();
        let (status, text) = match method.as_str() {
            "PUT" if path == "/latest/api/token" && ttl.is_some() => (200, TOKEN.to_string()),
            "PUT" => (400, String::new()),
            "GET" if token.as_deref() != Some(TOKEN) => {
                refused.fetch_add(1, Ordering::SeqCst);
                (401, String::new())
            }
            "GET" => match path.strip_prefix("/latest/meta-data/").and_then(|p| md.get(p)) {
                Some(v) => (200, v.clone()),
                None => (404, String::new()),
            },
            _ => (405, String::new()),
        };
        let mut s = &stream;
        let reply = format!(
            "HTTP/1.1 {status} X\r\n{ttl_header}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if s.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
