//! The API's HTTP server: an accept loop over hyper's HTTP/1 connection driver with the limits
//! axum's `serve` lacks.
//!
//! - At most `max_connections` connections at once; one more is answered `503` with a fixed
//!   text (best effort, without waiting for the client) and closed, counted in
//!   `api_connections_refused`.
//! - A request's headers must arrive within `header_timeout` (slowloris), counted in
//!   `api_header_timeouts`; a whole connection (one request: no keep-alive) must finish within
//!   `request_timeout`, counted in `api_request_timeouts`.
//! - Requests whose `Host` is not allowed ([`AllowedHosts`], DNS rebinding) are answered `421`
//!   by [`super::host`], counted in `api_host_rejected`.
//!
//! Limits: HTTP/1.1 only, one request per connection (a scraper reconnects per scrape).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::state::ApiStats;

/// Limits of the API server (from the `api_*` configuration keys).
#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
}

/// What an over-cap connection gets (written without waiting; the client may not read it).
const OVER_CAP: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 21\r\n\
connection: close\r\n\r\ntoo many connections\n";

/// Logs one WARN line when `listen` is reachable from other hosts.
pub fn warn_if_exposed(listen: SocketAddr) {
    if !listen.ip().is_loopback() {
        tracing::warn!(
            %listen,
            "the API listens on a non-loopback address: /flows and /status are readable by anyone who can reach it (no authentication); prefer 127.0.0.1"
        );
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then waits for open connections
/// (each bounded by `request_timeout`; the caller bounds the wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ServerSettings,
    stats: Arc<ApiStats>,
    shutdown: impl Future<Output = ()>,
) {
    let cap = settings.max_connections.max(1);
    stats.max_connections.store(cap as u64, Ordering::Relaxed);
    let slots = Arc::new(Semaphore::new(cap));
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            let _ = stream.try_write(OVER_CAP);
            drop(stream);
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.active.fetch_add(1, Ordering::Relaxed);
        let (router, settings, stats) = (router.clone(), settings.clone(), stats.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(settings.header_timeout).keep_alive(false);
            let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
            match tokio::time::timeout(settings.request_timeout, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.is_timeout() => {
                    stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(_)) => {} // the client went away, or sent garbage (hyper answered 400)
                Err(_) => {
                    stats.request_timeouts.fetch_add(1, Ordering::Relaxed);
                }
            }
            stats.active.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    // Every slot back means every connection ended.
    let _ = slots.acquire_many(u32::try_from(cap).unwrap_or(u32::MAX)).await;
}
