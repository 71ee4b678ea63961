//! The local HTTP API (axum, bound to 127.0.0.1:9780 by default):
//! `/healthz` (liveness, for the ECS health check), `/readyz` (first scan done),
//! `/status` (collector, hooks, kernel, map fill, drops, uptime) and `/flows`
//! (open and recently closed flow records, [`flows_query`]), `/metrics` (see [`crate::metrics`]),
//! `/map` and `/api/map` (this host's service map, [`crate::map`]).
//!
//! Bounded: [`server`] caps connections and times out slow clients; [`host`] refuses foreign
//! `Host` headers. Handlers that read state behind the collector's locks run on the blocking
//! pool and only copy under a lock; serialising, sorting and rendering happen after, on the
//! blocking pool too, so that neither a stuck collector nor a large answer (100,000 flows, a
//! big `/metrics`) holds up the async worker that answers `/healthz`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;

use crate::metrics;
use crate::state::Shared;
use crate::status::Status;
use crate::tags::Tagged;

pub mod flows_query;
pub mod host;
pub mod server;
pub mod stream;

use flows_query::FlowQuery;

/// Routes over the shared state; `/metrics` only when `metrics` is on; every request goes
/// through the `Host` guard.
pub fn router(shared: Arc<Shared>, metrics: bool, allowed: host::AllowedHosts) -> Router {
    let guard = host::HostGuard { allowed: Arc::new(allowed), stats: shared.api.clone() };
    let r = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/flows", get(flows))
        .route("/dns", get(dns))
        .route("/map", get(crate::map::page))
        .route("/api/map", get(map));
    let r = if metrics { r.route("/metrics", get(metrics_handler)) } else { r };
    r.with_state(shared).layer(axum::middleware::from_fn_with_state(guard, host::guard))
}

/// Runs `f` on the blocking pool (it may wait for a lock the collector holds).
async fn blocking<T: Send + 'static>(
    s: &Arc<Shared>,
    f: impl FnOnce(&Shared) -> T + Send + 'static,
) -> Result<T, Response> {
    let s = s.clone();
    tokio::task::spawn_blocking(move || f(&s)).await.map_err(|e| {
        tracing::error!(error = %e, "API worker failed");
        (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
    })
}

/// OpenMetrics when the scraper prefers it (`Accept: application/openmetrics-text`), else
/// the Prometheus text format.
async fn metrics_handler(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let body = blocking(&s, move |s| {
        let status = Status::of(s);
        let (series, aggregate) = s.export.series.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let transfers = s.export.transfers.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let dns = s
            .export
            .dns
            .as_ref()
            .map(|d| d.lock().unwrap_or_else(PoisonError::into_inner).rows_unsorted())
            .unwrap_or_default();
        let dns = crate::dns::sort_rows(dns);
        metrics::render(
            &metrics::Snapshot {
                series: &series,
                transfers: &transfers,
                aggregate,
                status: &status,
                dns: &dns,
            },
            openmetrics,
        )
    })
    .await;
    let body = match body {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ct = if openmetrics { metrics::OPENMETRICS_CONTENT_TYPE } else { metrics::TEXT_CONTENT_TYPE };
    ([(header::CONTENT_TYPE, ct)], body).into_response()
}

/// 200 `ok` while the collector completes polls; 503 with the reason when it is stalled
/// (no poll for [`crate::liveness::stall_after`]) or stopped. Takes no lock.
async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    let health = s.collector.heartbeat.health(s.collector.collecting.load(Ordering::SeqCst));
    let code = if health.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, format!("{}\n", health.reason())).into_response()
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    if s.collector.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

/// DNS statistics per client, server, name and type; 404 when DNS monitoring is off.
async fn dns(State(s): State<Arc<Shared>>) -> Response {
    match &s.export.dns {
        Some(_) => {
            let body = blocking(&s, |s| {
                let rows = s
                    .export
                    .dns
                    .as_ref()
                    .map(|d| d.lock().unwrap_or_else(PoisonError::into_inner).rows_unsorted());
                serde_json::to_vec(&crate::dns::sort_rows(rows.unwrap_or_default()))
            })
            .await;
            match body {
                Ok(b) => json_body(b),
                Err(r) => r,
            }
        }
        None => (StatusCode::NOT_FOUND, "DNS monitoring is off (dns = false, or not the eBPF collector)\n")
            .into_response(),
    }
}

async fn status(State(s): State<Arc<Shared>>) -> Response {
    match blocking(&s, Status::of).await {
        Ok(st) => Json(st).into_response(),
        Err(r) => r,
    }
}

/// The map of this host's series over a window (see [`crate::map`]).
async fn map(State(s): State<Arc<Shared>>, Query(pairs): Query<Vec<(String, String)>>) -> Response {
    let q = match crate::map::MapQuery::parse(&pairs) {
        Ok(q) => q,
        Err(e) => return crate::map::bad_query(&e),
    };
    let model =
        blocking(&s, move |s| crate::map::agent_model(&s.export.map, &q, std::time::SystemTime::now())).await;
    match model {
        Ok(m) => crate::map::json(&m),
        Err(r) => r,
    }
}

/// Header: flows matching the query in all.
pub const FLOWS_TOTAL_HEADER: &str = "x-eddy-flows-total";
/// Header: `true` when `limit` left matching flows out.
pub const FLOWS_TRUNCATED_HEADER: &str = "x-eddy-flows-truncated";

/// A JSON array of flow records (see [`flows_query`]); the headers say whether it is complete.
async fn flows(State(s): State<Arc<Shared>>, Query(pairs): Query<Vec<(String, String)>>) -> Response {
    let q = match FlowQuery::parse(&pairs) {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("/flows: {e}\n")).into_response(),
    };
    let limit = q.limit;
    // Only the copy happens under the table's lock; the JSON is streamed (see [`stream`]).
    let answer = blocking(&s, move |s| s.table().select(|r| q.matches(r), limit)).await;
    let (flows, total) = match answer {
        Ok(x) => x,
        Err(r) => return r,
    };
    let truncated = if total > flows.len() { "true" } else { "false" };
    let shared = s.clone();
    let body = stream::json_array(flows, move |buf, f| {
        serde_json::to_writer(buf, &Tagged { record: f, tags: &shared.export.tags })
    });
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    let headers = response.headers_mut();
    headers.insert(FLOWS_TOTAL_HEADER, header::HeaderValue::from(total));
    headers.insert(FLOWS_TRUNCATED_HEADER, header::HeaderValue::from_static(truncated));
    response
}

/// A serialised JSON body as a response (500 when serialising failed).
fn json_body(body: Result<Vec<u8>, serde_json::Error>) -> Response {
    match body {
        Ok(b) => ([(header::CONTENT_TYPE, "application/json")], b).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "API answer could not be serialised");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        }
    }
}
