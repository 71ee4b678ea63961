//! One HTTP/1.1 `GET` on a plain TCP connection, for health checks: connect, send, read a
//! bounded answer, split status line and body. An unspecified listen address (`0.0.0.0`,
//! `::`) is probed on loopback.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Why there is no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot reach {who} at {addr}: {source}")]
    Connect { who: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("talking to {who} at {addr}: {source}")]
    Io { who: &'static str, addr: SocketAddr, source: std::io::Error },
}

/// What came back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The address actually probed.
    pub addr: SocketAddr,
    /// `HTTP/1.1 200 OK`.
    pub status_line: String,
    /// What follows the headers (possibly cut at the byte limit).
    pub body: String,
}

impl Answer {
    /// The status code is 200.
    pub fn ok(&self) -> bool {
        self.status_line.split_whitespace().nth(1) == Some("200")
    }
}

/// The address to probe for a listen address: loopback in place of an unspecified one.
pub fn target(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port()),
        _ => listen,
    }
}

/// `GET path` to `listen` (see [`target`]) within `timeout` per step, reading at most
/// `max_bytes` of the answer; `who` names the peer in errors (`the agent`).
pub fn get(
    who: &'static str,
    listen: SocketAddr,
    path: &str,
    timeout: Duration,
    max_bytes: u64,
) -> Result<Answer, ProbeError> {
    let addr = target(listen);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|source| ProbeError::Connect {
        who,
        addr,
        source,
    })?;
    let io = |source| ProbeError::Io { who, addr, source };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(io)?;
    let mut raw = Vec::new();
    s.take(max_bytes).read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let status_line = text.lines().next().unwrap_or("").to_string();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Ok(Answer { addr, status_line, body })
}

/// A one-shot server for the health checks' tests.
#[cfg(any(test, feature = "test-util"))]
pub mod test_server {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener};

    /// Answers one connection on loopback with `answer` (after reading the request).
    pub fn serve_once(answer: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer.as_bytes());
            }
        });
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::serve_once;
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn status_line_and_body_bounded() {
        let a = get(
            "it",
            serve_once("HTTP/1.1 200 OK\r\nx: y\r\n\r\nok\n"),
            "/healthz",
            Duration::from_secs(2),
            1024,
        )
        .expect("answer");
        assert!(a.ok());
        assert_eq!((a.status_line.as_str(), a.body.as_str()), ("HTTP/1.1 200 OK", "ok\n"));
        let a = get("it", serve_once("HTTP/1.1 503 Busy\r\n\r\n0123456789"), "/", Duration::from_secs(2), 24)
            .expect("answer");
        assert!(!a.ok());
        assert_eq!(a.body, "012");
        let closed = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        assert!(matches!(
            get("it", closed, "/", Duration::from_secs(1), 64),
            Err(ProbeError::Connect { .. })
        ));
    }

    #[test]
    fn an_unspecified_address_is_probed_on_loopback() {
        let ok = serve_once("HTTP/1.1 200 OK\r\n\r\n");
        let any = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), ok.port());
        assert_eq!(get("it", any, "/", Duration::from_secs(2), 64).expect("answer").addr, ok);
    }
}
