//! The forwarding side: one listener per route, a connection limit per route, and graceful
//! shutdown.
//!
//! How: every route port accepts plain TCP on the local address. A connection first takes a
//! permit from the route's semaphore (none left: refused and counted; HTTP routes answer 503
//! first). HTTP routes go through [`http`] (request head read and rewritten, errors answered as
//! 502/503) under the whole-life and minimum-rate limits of [`limits`]; raw TCP routes connect
//! upstream over TLS and relay bytes ([`upstream`]).
//!
//! Shutdown: on the watch signal, listeners stop accepting at once; open connections get
//! `shutdown_grace` to finish, then the runtime drops them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsConnector;

use crate::config::{Config, RouteKind, Upstream};
use crate::status::{Health, RouteStats};

pub mod http;
pub mod limits;
pub mod upstream;

/// Everything a connection of one route needs.
pub struct Route {
    pub stats: Arc<RouteStats>,
    /// `None` for the unconfigured default route (every connection is answered 503).
    pub upstream: Option<Upstream>,
    pub connector: Option<TlsConnector>,
    pub limit: Arc<Semaphore>,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Whole-life and minimum-rate limits of HTTP client connections.
    pub limits: limits::Limits,
}

impl Route {
    /// HTTP handling unless the upstream is a raw `tls://` one.
    fn kind(&self) -> RouteKind {
        self.upstream.as_ref().map_or(RouteKind::Http, |u| u.kind)
    }
}

/// Builds a route from its configuration (TLS configuration and trusted roots included).
pub fn build_route(
    cfg: &Config,
    index: usize,
    stats: Arc<RouteStats>,
) -> Result<Route, crate::crypto::CryptoError> {
    let spec = &cfg.routes[index];
    // validate() already parsed every upstream.
    let upstream = spec.parse_upstream().ok().flatten();
    let connector = match &upstream {
        Some(u) => {
            let roots = crate::crypto::roots(u.ca_file.as_deref())?;
            Some(TlsConnector::from(crate::crypto::client_config(roots)?))
        }
        None => None,
    };
    Ok(Route {
        stats,
        upstream,
        connector,
        limit: Arc::new(Semaphore::new(cfg.max_connections_per_route)),
        max_connections: cfg.max_connections_per_route,
        connect_timeout: cfg.connect_timeout,
        idle_timeout: cfg.idle_timeout,
        limits: limits::Limits {
            request_timeout: cfg.request_timeout,
            min_bytes_per_second: cfg.min_bytes_per_second,
            window: cfg.idle_timeout,
        },
    })
}

/// Accepts connections of one route until shutdown.
pub async fn serve_route(listener: TcpListener, route: Arc<Route>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        let (client, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(route = %route.stats.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let route = route.clone();
        tokio::spawn(async move {
            let Ok(permit) = route.limit.clone().try_acquire_owned() else {
                route.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(route = %route.stats.name, %peer, limit = route.max_connections,
                    "connection refused: route connection limit reached");
                if route.kind() == RouteKind::Http {
                    http::refuse_over_limit(client, route.max_connections).await;
                }
                return;
            };
            route.stats.connections.fetch_add(1, Ordering::Relaxed);
            route.stats.active.fetch_add(1, Ordering::Relaxed);
            handle(client, &route).await;
            route.stats.active.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

async fn handle(client: TcpStream, route: &Route) {
    match route.kind() {
        RouteKind::Http => {
            let meter = limits::Meter::default();
            let cut = limits::enforce(route.limits, &meter, http::handle(client, route, &meter)).await;
            if let Some(cut) = cut {
                let counter = match cut {
                    limits::Cut::Lifetime(_) => &route.stats.closed_request_timeout,
                    limits::Cut::TooSlow { .. } => &route.stats.closed_too_slow,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::info!(route = %route.stats.name, reason = %cut, bytes = meter.get(), "client connection closed");
            }
        }
        RouteKind::Tcp => match upstream::connect(route).await {
            Ok(tls) => {
                let (up, down) = upstream::relay(client, tls, route, &limits::Meter::default()).await;
                tracing::debug!(route = %route.stats.name, bytes_up = up, bytes_down = down, "tcp connection closed");
            }
            Err(e) => {
                record_failure(route, &e);
                // Raw TCP has no way to say why: closing is the answer.
            }
        },
    }
}

/// Probes the route's upstream every `interval` (TCP connect + TLS handshake, then close) until
/// shutdown, keeping its health current. Probes update health and `last_error` only, not counters.
pub async fn probe_loop(route: Arc<Route>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    if route.upstream.is_none() || interval.is_zero() {
        return;
    }
    loop {
        match upstream::connect(&route).await {
            Ok(mut tls) => {
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
            }
            Err(e) => {
                let health = if e.is_tls() { Health::TlsError } else { Health::Down };
                tracing::debug!(route = %route.stats.name, error = %e, "upstream probe failed");
                route.stats.set_health(health, Some(e.to_string()));
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Counts an upstream failure and updates the route's health.
pub fn record_failure(route: &Route, e: &upstream::UpstreamError) {
    let text = e.to_string();
    if e.is_tls() {
        route.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
        route.stats.set_health(Health::TlsError, Some(text.clone()));
    } else {
        route.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
        let health = if matches!(e, upstream::UpstreamError::Unconfigured) {
            Health::Unconfigured
        } else {
            Health::Down
        };
        route.stats.set_health(health, Some(text.clone()));
    }
    tracing::warn!(route = %route.stats.name, error = %text, "upstream connection failed");
}

/// Waits until no route has an open connection, or `grace` has passed. Returns what is left.
pub async fn drain(routes: &[Arc<Route>], grace: Duration) -> u64 {
    let deadline = Instant::now() + grace;
    loop {
        let open: u64 = routes.iter().map(|r| r.stats.active.load(Ordering::Relaxed)).sum();
        if open == 0 || Instant::now() >= deadline {
            return open;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
