//! `eddy-fips-proxy`: Eddy's FIPS egress sidecar for GovCloud.
//!
//! What: local plain-text ports (loopback by default) forwarded to configured upstreams over TLS
//! whose cryptography is the AWS-LC FIPS module (rustls with aws-lc-rs built with `fips`). The
//! agent sends its OTLP export to `http://127.0.0.1:9804`; the proxy carries it to the collector
//! over TLS 1.2/1.3 with approved algorithms only.
//!
//! How: [`config`] builds the route table (port `port_range_start` is the status port, routes
//! follow); [`crypto`] checks the module's FIPS mode and builds the restricted TLS configuration
//! (refusing to start otherwise); [`proxy`] accepts, limits and forwards connections (HTTP routes
//! rewrite `Host` and answer 502/503 themselves, raw TCP routes relay bytes); [`status`] serves
//! the status JSON and implements the `healthcheck` subcommand.
//!
//! Limits: outbound TLS only (the local side is plain text, hence loopback by default); HTTP/1.x,
//! one request per client connection on HTTP routes; upstream health is the latest probe or connection.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub mod cli;
pub mod config;
pub mod crypto;
pub mod proxy;
pub mod status;

use config::Config;

/// Why the proxy stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    #[error("route {route}: {source}")]
    Route { route: String, source: crypto::CryptoError },
    #[error(
        "cannot listen on {addr} ({what}): {source}. Is another process using the port range starting at {start}?"
    )]
    Bind { addr: std::net::SocketAddr, what: String, start: u16, source: std::io::Error },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install the signal handler: {0}")]
    Signal(std::io::Error),
}

/// Runs the proxy until SIGTERM/SIGINT. The FIPS check happens before anything listens.
pub fn run(cfg: Config) -> Result<(), RunError> {
    let module = crypto::require_fips_module()?;
    tracing::info!(
        module = %module.module,
        version = env!("CARGO_PKG_VERSION"),
        fips_mode = module.fips_mode,
        tls_config_fips = module.tls_config_fips,
        "{} {} using {}: FIPS mode {}",
        status::SERVICE,
        env!("CARGO_PKG_VERSION"),
        module.module,
        if module.fips_mode { "on" } else { "off" },
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let result = rt.block_on(serve(cfg, module));
    // Connections still open after the grace period (and a stuck name lookup) are dropped here.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn serve(cfg: Config, module: crypto::ModuleInfo) -> Result<(), RunError> {
    let mut routes = Vec::new();
    for (i, spec) in cfg.routes.iter().enumerate() {
        let stats = Arc::new(status::RouteStats::new(spec, cfg.route_addr(i).port()));
        let route = proxy::build_route(&cfg, i, stats)
            .map_err(|source| RunError::Route { route: spec.name.clone(), source })?;
        routes.push(Arc::new(route));
    }
    let bind = |addr, what: String| async move {
        TcpListener::bind(addr).await.map_err(|source| RunError::Bind {
            addr,
            what,
            start: cfg.port_range_start,
            source,
        })
    };
    let status_listener = bind(cfg.status_addr(), "status".to_string()).await?;
    let mut listeners = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        listeners.push(bind(cfg.route_addr(i), format!("route {}", route.stats.name)).await?);
    }
    let (tx, rx) = watch::channel(false);
    let stats: Vec<_> = routes.iter().map(|r| r.stats.clone()).collect();
    tokio::spawn(status::serve(status_listener, module, stats, cfg.max_status_connections, rx.clone()));
    for (i, (listener, route)) in listeners.into_iter().zip(&routes).enumerate() {
        tracing::info!(
            route = %route.stats.name,
            listen = %cfg.route_addr(i),
            upstream = route.upstream.as_ref().map(|u| u.authority()).as_deref().unwrap_or("<unconfigured>"),
            server_name = route.upstream.as_ref().map(|u| u.server_name.as_str()).unwrap_or("-"),
            kind = ?route.upstream.as_ref().map(|u| u.kind),
            "route listening"
        );
        tokio::spawn(proxy::serve_route(listener, route.clone(), rx.clone()));
        tokio::spawn(proxy::probe_loop(route.clone(), cfg.probe_interval, rx.clone()));
    }
    tracing::info!(status = %cfg.status_addr(), routes = routes.len(), "proxy ready");
    wait_for_signal().await?;
    tracing::info!(grace = ?cfg.shutdown_grace, "shutdown requested: no new connections; draining");
    let _ = tx.send(true);
    let left = proxy::drain(&routes, cfg.shutdown_grace).await;
    if left > 0 {
        tracing::warn!(open = left, "shutdown grace over: closing remaining connections");
    } else {
        tracing::info!("all connections finished");
    }
    Ok(())
}

async fn wait_for_signal() -> Result<(), RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
