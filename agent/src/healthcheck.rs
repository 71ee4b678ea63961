//! `eddy-agent healthcheck`: the container health check without curl — one
//! `GET /healthz` to the configured `listen` address (an unspecified address
//! such as 0.0.0.0 is checked on loopback).

use std::net::SocketAddr;
use std::time::Duration;

use eddy_common::probe::{self, ProbeError};

/// Why the agent is not healthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("the agent at {addr} answered {status_line:?}: {reason}")]
    Unhealthy { addr: SocketAddr, status_line: String, reason: String },
}

/// Succeeds if `GET /healthz` answers 200 within `timeout`.
pub fn check(listen: SocketAddr, timeout: Duration) -> Result<(), HealthError> {
    // The answer is short (`ok`, or one line saying why not); read at most 1 KiB of it.
    let a = probe::get("the agent", listen, "/healthz", timeout, 1024)?;
    if a.ok() {
        Ok(())
    } else {
        Err(HealthError::Unhealthy {
            addr: a.addr,
            status_line: a.status_line,
            reason: a.body.trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_common::probe::test_server::serve_once;
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn healthy_unhealthy_and_down() {
        let ok = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n");
        assert!(check(ok, Duration::from_secs(2)).is_ok());
        let bad =
            serve_once("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 18\r\n\r\ncollector stopped\n");
        let e = check(bad, Duration::from_secs(2)).expect_err("503");
        assert!(e.to_string().contains("503") && e.to_string().ends_with(": collector stopped"), "{e}");
        let closed = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        assert!(matches!(
            check(closed, Duration::from_secs(1)),
            Err(HealthError::Probe(ProbeError::Connect { .. }))
        ));
    }

    #[test]
    fn unspecified_listen_address_is_checked_on_loopback() {
        let ok = serve_once("HTTP/1.1 200 OK\r\n\r\n");
        let any = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), ok.port());
        assert!(check(any, Duration::from_secs(2)).is_ok());
    }
}
