//! `eddy-fips-proxy healthcheck`: the ECS container health check without curl. One `GET /` to the
//! status port (an unspecified `local_address` is checked on loopback); healthy when the answer
//! is 200 with `"fips_mode": true`. Upstream health does not count: an unreachable collector must
//! not restart the sidecar (the status JSON shows it).

use std::net::SocketAddr;
use std::time::Duration;

use eddy_common::probe::{self, ProbeError};

/// Why the proxy is not healthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("the proxy at {addr} answered {status_line:?}")]
    Unhealthy { addr: SocketAddr, status_line: String },
    #[error("the proxy at {addr} does not report FIPS mode")]
    NotFips { addr: SocketAddr },
}

/// Succeeds if the status port answers 200 with FIPS mode on, within `timeout`.
pub fn check(status: SocketAddr, timeout: Duration) -> Result<(), HealthError> {
    let a = probe::get("the proxy's status port", status, "/", timeout, 1 << 20)?;
    if !a.ok() {
        return Err(HealthError::Unhealthy { addr: a.addr, status_line: a.status_line });
    }
    let fips = serde_json::from_str::<serde_json::Value>(&a.body)
        .ok()
        .and_then(|v| v.get("fips_mode").and_then(serde_json::Value::as_bool))
        .unwrap_or(false);
    if fips { Ok(()) } else { Err(HealthError::NotFips { addr: a.addr }) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_common::probe::test_server::serve_once;
    use std::net::TcpListener;

    #[test]
    fn healthy_not_fips_unhealthy_and_down() {
        let ok = serve_once("HTTP/1.1 200 OK\r\n\r\n{\"fips_mode\": true}");
        assert!(check(ok, Duration::from_secs(2)).is_ok());
        let no = serve_once("HTTP/1.1 200 OK\r\n\r\n{\"fips_mode\": false}");
        assert!(matches!(check(no, Duration::from_secs(2)), Err(HealthError::NotFips { .. })));
        let bad = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let e = check(bad, Duration::from_secs(2)).expect_err("503");
        assert!(e.to_string().contains("503"), "{e}");
        let closed = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        assert!(matches!(
            check(closed, Duration::from_secs(1)),
            Err(HealthError::Probe(ProbeError::Connect { .. }))
        ));
    }
}
