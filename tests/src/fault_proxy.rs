//! A fault-injecting HTTP relay in front of a real API server (moto): in `Pass` mode it
//! forwards each request unchanged; otherwise it answers like AWS does under throttling,
//! a server error or a missing permission, in the protocol of the request (awsJson 1.1 for
//! ECS, the EC2 query protocol's XML for EC2). It counts the requests it sees per
//! operation (`X-Amz-Target`, or the query `Action`), so tests can bound API calls.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// What the relay does with the next request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    Pass = 0,
    Throttle = 1,
    ServerError = 2,
    AccessDenied = 3,
}

/// The relay; runs until the test process ends.
#[derive(Clone)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl FaultProxy {
    /// Relays to `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let proxy = FaultProxy {
            addr: listener.local_addr().expect("addr"),
            mode: Arc::new(AtomicU8::new(Fault::Pass as u8)),
            counts: Arc::default(),
        };
        let p = proxy.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let p = p.clone();
                std::thread::spawn(move || {
                    // Keep-alive: serve requests on this connection until the client closes it.
                    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                    while let Some((head, body, target)) = read_request(&mut reader) {
                        let json = target.contains('.');
                        *p.counts.lock().unwrap_or_else(|e| e.into_inner()).entry(target).or_default() += 1;
                        let reply = p.answer(upstream, &head, &body, json);
                        if (&stream).write_all(&reply).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        proxy
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, f: Fault) {
        self.mode.store(f as u8, Ordering::SeqCst);
    }

    /// Requests seen per operation (`X-Amz-Target`, or the method and path).
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn total(&self) -> u64 {
        self.counts().values().sum()
    }

    fn answer(&self, upstream: SocketAddr, head: &str, body: &[u8], json: bool) -> Vec<u8> {
        let error = |status: u16, kind: &str, msg: &str| {
            let (ctype, b) = if json {
                ("application/x-amz-json-1.1", format!("{{\"__type\":\"{kind}\",\"message\":\"{msg}\"}}"))
            } else {
                (
                    "text/xml",
                    format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{kind}</Code>\
                         <Message>{msg}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>"
                    ),
                )
            };
            format!(
                "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nx-amzn-ErrorType: {kind}\r\n\
                 Content-Length: {}\r\n\r\n{b}",
                b.len()
            )
            .into_bytes()
        };
        let mode = self.mode.load(Ordering::SeqCst);
        match (mode, json) {
            (1, true) => error(400, "ThrottlingException", "Rate exceeded"),
            (1, false) => error(503, "RequestLimitExceeded", "Request limit exceeded."),
            (2, true) => error(500, "ServerException", "Internal failure"),
            (2, false) => error(500, "InternalError", "An internal error has occurred"),
            (3, true) => error(400, "AccessDeniedException", "User is not authorized to perform this action"),
            (3, false) => {
                error(403, "UnauthorizedOperation", "You are not authorized to perform this operation.")
            }
            _ => relay(upstream, head, body),
        }
    }
}

/// One request: head (request line + headers, with `Connection: close` forced), body, operation.
fn read_request(r: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>, String)> {
    let mut line = String::new();
    r.read_line(&mut line).ok().filter(|&n| n > 0)?;
    let mut head = line.clone();
    let (mut len, mut target) = (0usize, line.split_whitespace().take(2).collect::<Vec<_>>().join(" "));
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok().filter(|&n| n > 0)?;
        if h == "\r\n" || h == "\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("x-amz-target:") {
            target = h["x-amz-target:".len()..].trim().to_string();
        }
        if !lower.starts_with("connection:") {
            head.push_str(&h);
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    // Query protocol (EC2): the operation is the form's Action.
    if let Some(action) = String::from_utf8_lossy(&body).split('&').find_map(|kv| kv.strip_prefix("Action="))
    {
        target = action.to_string();
    }
    Some((head, body, target))
}

/// Forwards one request and returns the whole response, re-framed with its length.
fn relay(upstream: SocketAddr, head: &str, body: &[u8]) -> Vec<u8> {
    let mut up = TcpStream::connect(upstream).expect("connect upstream");
    up.write_all(head.as_bytes()).expect("write head");
    up.write_all(body).expect("write body");
    let mut resp = Vec::new();
    up.read_to_end(&mut resp).expect("read upstream");
    // The upstream closed after one response; tell the client the length so it can keep the connection.
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").map_or(resp.len(), |i| i + 4);
    let (h, b) = resp.split_at(split);
    let mut out = String::new();
    for l in String::from_utf8_lossy(h).split("\r\n").filter(|l| !l.is_empty()) {
        let lower = l.to_ascii_lowercase();
        if !lower.starts_with("content-length:")
            && !lower.starts_with("connection:")
            && !lower.starts_with("transfer-encoding:")
        {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
    let mut v = out.into_bytes();
    v.extend_from_slice(b);
    v
}
