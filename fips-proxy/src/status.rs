//! Per-route counters and the status port.
//!
//! The status port (`port_range_start`) answers `GET /` (and `GET /status`) with JSON: the
//! service name and version, the crypto module and its FIPS mode, and per route its port,
//! upstream, health and counters; `GET /healthz` answers `ok`. Upstream health is the outcome of
//! the latest upstream connection attempt, by a client connection or by the periodic probe
//! (`unknown` before the first one, `unconfigured` for a route without upstream).
//!
//! At most `max_status_connections` connections are served at once; more are answered 503 and
//! closed, and counted in the JSON as `status_connections_refused` (a stuck or flooding local
//! client cannot pile up tasks; each served connection is bounded by a 5 s request-head timeout).
//!
//! Limits: HTTP/1.x only, one request per connection, no TLS on this port (it is local).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::config::{RouteKind, RouteSpec};
use crate::crypto::ModuleInfo;

pub mod healthcheck;

/// Name of this program in the status JSON and logs.
pub const SERVICE: &str = "eddy-fips-proxy";

/// Latest known upstream state of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Unknown,
    Unconfigured,
    Up,
    /// TCP connect failed or timed out.
    Down,
    /// TLS handshake or certificate verification failed.
    TlsError,
}

/// Counters of one route (lock-free except the last error text).
#[derive(Debug)]
pub struct RouteStats {
    pub name: String,
    pub port: u16,
    pub kind: Option<RouteKind>,
    pub upstream: Option<String>,
    pub server_name: Option<String>,
    pub connections: AtomicU64,
    pub active: AtomicU64,
    pub refused: AtomicU64,
    pub bytes_to_upstream: AtomicU64,
    pub bytes_from_upstream: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub upstream_errors: AtomicU64,
    /// HTTP client connections closed at `request_timeout`.
    pub closed_request_timeout: AtomicU64,
    /// HTTP client connections closed for moving fewer bytes than `min_bytes_per_second` asks.
    pub closed_too_slow: AtomicU64,
    state: Mutex<(Health, Option<String>)>,
    /// Version, suite and group of the latest successful handshake.
    last_handshake: Mutex<Option<String>>,
}

impl RouteStats {
    pub fn new(spec: &RouteSpec, port: u16) -> RouteStats {
        let parsed = spec.parse_upstream().ok().flatten();
        let health = if parsed.is_some() { Health::Unknown } else { Health::Unconfigured };
        RouteStats {
            name: spec.name.clone(),
            port,
            kind: parsed.as_ref().map(|u| u.kind),
            upstream: parsed.as_ref().map(|u| u.authority()),
            server_name: parsed.map(|u| u.server_name),
            connections: AtomicU64::new(0),
            active: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            bytes_to_upstream: AtomicU64::new(0),
            bytes_from_upstream: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            closed_request_timeout: AtomicU64::new(0),
            closed_too_slow: AtomicU64::new(0),
            state: Mutex::new((health, None)),
            last_handshake: Mutex::new(None),
        }
    }

    /// Records the outcome of an upstream connection attempt.
    pub fn set_health(&self, health: Health, error: Option<String>) {
        if let Ok(mut s) = self.state.lock() {
            s.0 = health;
            if error.is_some() {
                s.1 = error;
            }
        }
    }

    /// Records what the latest successful handshake negotiated.
    pub fn set_handshake(&self, description: String) {
        if let Ok(mut h) = self.last_handshake.lock() {
            *h = Some(description);
        }
    }

    pub fn health(&self) -> (Health, Option<String>) {
        self.state.lock().map(|s| s.clone()).unwrap_or((Health::Unknown, None))
    }

    fn snapshot(&self) -> RouteStatus {
        let (health, last_error) = self.health();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RouteStatus {
            name: self.name.clone(),
            port: self.port,
            kind: self.kind,
            upstream: self.upstream.clone(),
            server_name: self.server_name.clone(),
            health,
            last_error,
            last_handshake: self.last_handshake.lock().ok().and_then(|h| h.clone()),
            connections: get(&self.connections),
            active: get(&self.active),
            refused: get(&self.refused),
            bytes_to_upstream: get(&self.bytes_to_upstream),
            bytes_from_upstream: get(&self.bytes_from_upstream),
            handshake_failures: get(&self.handshake_failures),
            upstream_errors: get(&self.upstream_errors),
            closed_request_timeout: get(&self.closed_request_timeout),
            closed_too_slow: get(&self.closed_too_slow),
        }
    }
}

/// One route in the status JSON.
#[derive(Debug, Serialize)]
pub struct RouteStatus {
    pub name: String,
    pub port: u16,
    pub kind: Option<RouteKind>,
    pub upstream: Option<String>,
    pub server_name: Option<String>,
    pub health: Health,
    pub last_error: Option<String>,
    /// `TLSv1_3 TLS13_AES_128_GCM_SHA256 secp256r1`: what the latest successful handshake negotiated.
    pub last_handshake: Option<String>,
    pub connections: u64,
    pub active: u64,
    pub refused: u64,
    pub bytes_to_upstream: u64,
    pub bytes_from_upstream: u64,
    pub handshake_failures: u64,
    pub upstream_errors: u64,
    pub closed_request_timeout: u64,
    pub closed_too_slow: u64,
}

/// The whole status document.
#[derive(Debug, Serialize)]
pub struct Status {
    pub service: &'static str,
    pub version: &'static str,
    pub crypto_module: String,
    pub fips_mode: bool,
    pub tls_config_fips: bool,
    /// Status-port connections refused over `max_status_connections`.
    pub status_connections_refused: u64,
    pub routes: Vec<RouteStatus>,
}

/// Builds the status document.
pub fn status(module: &ModuleInfo, routes: &[std::sync::Arc<RouteStats>], status_refused: u64) -> Status {
    Status {
        service: SERVICE,
        version: env!("CARGO_PKG_VERSION"),
        crypto_module: module.module.clone(),
        fips_mode: module.fips_mode,
        tls_config_fips: module.tls_config_fips,
        status_connections_refused: status_refused,
        routes: routes.iter().map(|r| r.snapshot()).collect(),
    }
}

/// What every status connection shares.
struct Shared {
    module: ModuleInfo,
    routes: Vec<Arc<RouteStats>>,
    limit: Arc<Semaphore>,
    max: usize,
    refused: AtomicU64,
}

/// Serves the status port, at most `max_connections` at once, until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    module: ModuleInfo,
    routes: Vec<Arc<RouteStats>>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let shared = Arc::new(Shared {
        module,
        routes,
        limit: Arc::new(Semaphore::new(max_connections)),
        max: max_connections,
        refused: AtomicU64::new(0),
    });
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let Ok(_permit) = shared.limit.clone().try_acquire_owned() else {
                            shared.refused.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%peer, limit = shared.max, "status connection refused: limit reached");
                            refuse(stream, shared.max).await;
                            return;
                        };
                        let refused = shared.refused.load(Ordering::Relaxed);
                        if let Err(e) = answer(stream, &shared.module, &shared.routes, refused).await {
                            tracing::debug!(error = %e, "status request failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "status port accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// The 503 for a status connection over the limit (written without reading the request).
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = format!("eddy-fips-proxy: status port connection limit ({max}) reached; retry later\n");
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(msg.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

async fn answer(
    mut stream: TcpStream,
    module: &ModuleInfo,
    routes: &[Arc<RouteStats>],
    status_refused: u64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    let read = async {
        while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
            let n = stream.read(&mut buf[len..]).await?;
            if n == 0 {
                break;
            }
            len += n;
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head timeout"))??;
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (code, ctype, body) = match (method, path) {
        ("GET", "/" | "/status") => {
            let json = serde_json::to_string_pretty(&status(module, routes, status_refused))
                .unwrap_or_else(|_| "{}".into());
            ("200 OK", "application/json", json + "\n")
        }
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        _ => ("404 Not Found", "text/plain", "not found: use GET / or GET /healthz\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {code}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
