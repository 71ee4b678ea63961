//! The service map: which workloads talk to which (and through which load balancer, NAT
//! gateway or endpoint), where connections fail or slow down, and what crosses Availability
//! Zones at what cost.
//!
//! One page ([`PAGE`], embedded: no CDN, no fonts from outside) and one JSON model
//! (`/api/map?window=5m&group=service&top=50&search=&scope=&errors=false`, [`model`]) with two
//! sources: the agent's own series over the window ([`history`]; `/map` on the agent's API:
//! this host's view), and a Prometheus-compatible query API that scrapes every agent
//! ([`prometheus`]; `eddy-agent map --prometheus URL`: the cluster's view, see [`serve_cluster`]).
//!
//! Limits: the map is drawn from the series, so it needs the `workloads` label group of
//! `series_labels` (the default) to name ECS ends; unnamed peers are `internet` or `unknown`
//! nodes (their addresses are in `/flows`). Readable at a few hundred services through
//! grouping and the top-N cut, done on the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::aggregate::Prices;
use crate::state::ApiStats;

pub mod ends;
pub mod history;
pub mod model;
pub mod prometheus;
pub mod promql;
pub mod query;

pub use history::History;
pub use model::{Context, Model};
pub use query::MapQuery;

/// The page: HTML, CSS and script in one file.
pub const PAGE: &str = include_str!("map/page.html");

/// `GET /map`.
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// RFC 3339 of `t`, to the second.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The model of this agent's own series: the window is copied under the history's lock (held
/// by the collector at each interval), the model built after.
pub fn agent_model(history: &std::sync::Mutex<History>, q: &MapQuery, now: SystemTime) -> Model {
    let ((rows, covered), prices) = {
        let h = history.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (h.window(now, q.window_duration), h.prices())
    };
    let ctx = Context {
        source: "agent",
        prometheus_url: None,
        covered_seconds: covered,
        generated_at: timestamp(now),
        prices,
    };
    model::build(&rows, q, &ctx)
}

/// A 400 naming the bad parameter.
pub fn bad_query(e: &query::QueryError) -> Response {
    (StatusCode::BAD_REQUEST, format!("/api/map: {e}\n")).into_response()
}

/// A model as a JSON answer.
pub fn json(model: &Model) -> Response {
    match serde_json::to_vec(model) {
        Ok(b) => ([(header::CONTENT_TYPE, "application/json")], b).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("serialising the map: {e}\n")).into_response(),
    }
}

/// Settings of `eddy-agent map`.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    pub prometheus: String,
    pub listen: SocketAddr,
    /// Sign queries with SigV4 (service `aps`) in this region.
    pub sigv4_region: Option<String>,
    pub query_timeout: Duration,
    pub prices: Prices,
    pub allowed_hosts: Vec<String>,
}

/// Why `eddy-agent map` could not run.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error(transparent)]
    Prometheus(#[from] prometheus::PromError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

struct Cluster {
    prometheus: prometheus::Prometheus,
    prices: Prices,
}

async fn cluster_api(State(c): State<Arc<Cluster>>, Query(pairs): Query<Vec<(String, String)>>) -> Response {
    let q = match MapQuery::parse(&pairs) {
        Ok(q) => q,
        Err(e) => return bad_query(&e),
    };
    let now = SystemTime::now();
    match c.prometheus.rows(&q, now).await {
        Ok(rows) => {
            let ctx = Context {
                source: "prometheus",
                prometheus_url: Some(crate::redact::url(&c.prometheus.url)),
                covered_seconds: q.window_duration.as_secs_f64(),
                generated_at: timestamp(now),
                prices: c.prices,
            };
            json(&model::build(&rows, &q, &ctx))
        }
        Err(e) => {
            tracing::warn!(error = %e, "map query failed");
            (StatusCode::BAD_GATEWAY, format!("querying Prometheus: {e}\n")).into_response()
        }
    }
}

/// `eddy-agent map --prometheus URL`: serves the page and `/api/map` for the whole cluster from
/// the query API until SIGTERM/SIGINT. The same limits as the agent's API (connection cap,
/// timeouts, `Host` allow-list).
pub fn serve_cluster(s: ClusterSettings) -> Result<(), MapError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(MapError::Runtime)?;
    rt.block_on(async {
        let sigv4 = match &s.sigv4_region {
            Some(region) => {
                let cfg = crate::aws::sdk::config(Some(region.clone()), s.query_timeout, false).await;
                let credentials = cfg
                    .credentials_provider()
                    .ok_or_else(|| prometheus::PromError::Sign("no AWS credentials found".into()))?;
                Some(prometheus::Sigv4 { region: region.clone(), credentials })
            }
            None => None,
        };
        let prom = prometheus::Prometheus::new(&s.prometheus, s.query_timeout, sigv4)?;
        let listener = tokio::net::TcpListener::bind(s.listen)
            .await
            .map_err(|source| MapError::Listen { addr: s.listen, source })?;
        crate::api::server::warn_if_exposed(s.listen);
        tracing::info!(listen = %s.listen, prometheus = %crate::redact::url(&prom.url), "serving the cluster map at /map");
        let stats = Arc::new(ApiStats::default());
        let guard = crate::api::host::HostGuard {
            allowed: Arc::new(crate::api::host::AllowedHosts::new(s.listen, &s.allowed_hosts)),
            stats: stats.clone(),
        };
        let cluster = Arc::new(Cluster { prometheus: prom, prices: s.prices });
        let router = Router::new()
            .route("/", get(|| async { axum::response::Redirect::to("/map") }))
            .route("/map", get(page))
            .route("/api/map", get(cluster_api))
            .route("/healthz", get(|| async { "ok\n" }))
            .with_state(cluster)
            .layer(axum::middleware::from_fn_with_state(guard, crate::api::host::guard));
        let limits = crate::api::server::ServerSettings {
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
            request_timeout: s.query_timeout + Duration::from_secs(30),
        };
        crate::api::server::serve(listener, router, limits, stats, crate::commands::shutdown_signal()).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests;
