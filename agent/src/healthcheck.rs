//! `eddy-agent healthcheck`: the container health check without curl — one
//! `GET /healthz` to the configured `listen` address (an unspecified address
//! such as 0.0.0.0 is checked on loopback).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Why the agent is not healthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot reach the agent at {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("talking to the agent at {addr}: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
    #[error("the agent at {addr} answered {status_line:?}: {reason}")]
    Unhealthy { addr: SocketAddr, status_line: String, reason: String },
}

/// Succeeds if `GET /healthz` answers 200 within `timeout`.
pub fn check(listen: SocketAddr, timeout: Duration) -> Result<(), HealthError> {
    let addr = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port()),
        _ => listen,
    };
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|source| HealthError::Connect { addr, source })?;
    let io = |source| HealthError::Io { addr, source };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(io)?;
    // The answer is short (`ok`, or one line saying why not); read at most 1 KiB of it.
    let mut head = Vec::with_capacity(1024);
    s.take(1024).read_to_end(&mut head).map_err(io)?;
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or("").to_string();
    if status_line.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        let reason = text.split_once("\r\n\r\n").map_or("", |(_, body)| body.trim()).to_string();
        Err(HealthError::Unhealthy { addr, status_line, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(answer: &'static str) -> SocketAddr {
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

    #[test]
    fn healthy_unhealthy_and_down() {
        let ok = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n");
        assert!(check(ok, Duration::from_secs(2)).is_ok());
        let bad =
            serve_once("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 18\r\n\r\ncollector stopped\n");
        let e = check(bad, Duration::from_secs(2)).expect_err("503");
        assert!(e.to_string().contains("503") && e.to_string().ends_with(": collector stopped"), "{e}");
        let closed = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        assert!(matches!(check(closed, Duration::from_secs(1)), Err(HealthError::Connect { .. })));
    }

    #[test]
    fn unspecified_listen_address_is_checked_on_loopback() {
        let ok = serve_once("HTTP/1.1 200 OK\r\n\r\n");
        let any = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), ok.port());
        assert!(check(any, Duration::from_secs(2)).is_ok());
    }
}
