//! The local HTTP API (axum, bound to 127.0.0.1:9780 by default):
//! `/healthz` (liveness, for the ECS health check), `/readyz` (first scan done),
//! `/status` (collector, hooks, kernel, map fill, drops, uptime) and `/flows`
//! (open and recently closed flow records, [`flows_query`]), `/metrics` (see [`crate::metrics`]).
//!
//! Bounded: [`server`] caps connections and times out slow clients; [`host`] refuses foreign
//! `Host` headers. Handlers that read state behind the collector's locks run on the blocking
//! pool and only copy under a lock; serialising, sorting and rendering happen after, on the
//! blocking pool too, so that neither a stuck collector nor a large answer (100,000 flows, a
//! big `/metrics`) holds up the async worker that answers `/healthz`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Serialize;

use crate::aggregate::AggregateStats;
use crate::collector::{HookStatus, MapStatus};
use crate::metrics;
use crate::otlp::OtlpCounts;
use crate::pipeline::Shared;
use crate::preflight::KernelInfo;
use crate::table::TableStats;
use crate::tags::{Tagged, Tags};

pub mod flows_query;
pub mod host;
pub mod server;

use flows_query::FlowQuery;

/// The `/status` document.
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub collector: &'static str,
    /// Why `collector = auto` did not run eBPF (absent when it did, or when configured).
    pub collector_reason: Option<String>,
    /// What the running collector cannot see (absent for eBPF: see the hooks).
    pub collector_limits: Option<&'static str>,
    pub ready: bool,
    pub collecting: bool,
    /// What `/healthz` answers, with the last poll's age and the stall threshold.
    pub liveness: crate::liveness::Health,
    pub uptime_seconds: f64,
    pub last_scan_age_seconds: Option<f64>,
    pub kernel: KernelInfo,
    pub hooks: Vec<HookStatus>,
    pub maps: Vec<MapStatus>,
    pub drops: BTreeMap<&'static str, u64>,
    pub counters: BTreeMap<&'static str, u64>,
    pub flows: TableStats,
    /// Closed flows waiting for their peer's labels, and what the labeller's bounds cost.
    pub labels: crate::pipeline::labeller::LabelCounts,
    pub aggregation: AggregateStats,
    /// OTLP exporter counters (absent when OTLP is off).
    pub otlp: Option<OtlpCounts>,
    /// ECS provider freshness and errors (absent when no ECS environment is detected).
    pub ecs: Option<serde_json::Value>,
    /// ECS API provider (remote ends) freshness and errors (absent when off).
    pub ecs_api: Option<serde_json::Value>,
    /// Enhanced resolution (AWS context of remote ends): decision, identity, resolver counters.
    pub aws: Option<serde_json::Value>,
    /// Static tags carried by every record.
    pub tags: Tags,
    /// FIPS mode (absent when off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fips: Option<crate::fips::FipsStatus>,
    /// DNS monitoring counters (absent when off).
    pub dns: Option<crate::dns::DnsCounters>,
    /// NAT attribution through conntrack (absent when off).
    pub conntrack: Option<serde_json::Value>,
    /// Capabilities kept after start-up (name, what for), those dropped, `no_new_privs`.
    pub privileges: Option<crate::privileges::PrivilegeStatus>,
    /// API connections: active, cap, accepted, refused, timeouts, foreign `Host`.
    pub api: server::ApiCounts,
}

impl Status {
    pub fn of(shared: &Shared) -> Status {
        let source = shared.source.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let flows = shared.table().stats();
        let mut drops = source.drops;
        drops.insert("output_dropped_records", shared.output_dropped.load(Ordering::Relaxed));
        drops.insert("output_write_errors", shared.output_errors.load(Ordering::Relaxed));
        drops.insert("poll_errors", shared.poll_errors.load(Ordering::Relaxed));
        drops.insert("export_overflow", flows.export_overflow);
        let labels = *shared.labels.lock().unwrap_or_else(PoisonError::into_inner);
        drops.insert("labels_not_held_full", labels.not_held_full);
        drops.insert("peer_labels_evicted", labels.peer_labels_evicted);
        let mut counters = source.counters;
        if let Some(o) = &shared.otlp {
            let c = o.counts();
            drops.insert("otlp_batches_dropped", c.batches_dropped);
            drops.insert("otlp_batches_rejected", c.batches_rejected);
            counters.insert("otlp_batches_sent", c.batches_sent);
            counters.insert("otlp_attempts_failed", c.attempts_failed);
        }
        let api = shared.api.counts();
        drops.insert("api_connections_refused", api.connections_refused);
        drops.insert("api_header_timeouts", api.header_timeouts);
        drops.insert("api_request_timeouts", api.request_timeouts);
        drops.insert("api_host_rejected", api.host_rejected);
        counters.insert("api_connections_accepted", api.connections_accepted);
        let last_scan = *shared.last_scan.lock().unwrap_or_else(PoisonError::into_inner);
        Status {
            version: env!("CARGO_PKG_VERSION"),
            collector: shared.collector,
            collector_reason: shared.collector_reason.clone(),
            collector_limits: shared.collector_limits,
            ready: shared.ready.load(Ordering::SeqCst),
            collecting: shared.collecting.load(Ordering::SeqCst),
            liveness: shared.heartbeat.health(shared.collecting.load(Ordering::SeqCst)),
            uptime_seconds: shared.started.elapsed().as_secs_f64(),
            last_scan_age_seconds: last_scan.map(|t| t.elapsed().as_secs_f64()),
            kernel: shared.kernel.clone(),
            hooks: source.hooks,
            maps: source.maps,
            drops,
            counters,
            flows,
            labels,
            aggregation: shared.series.lock().unwrap_or_else(PoisonError::into_inner).1,
            otlp: shared.otlp.as_ref().map(|o| o.counts()),
            ecs: shared.ecs.as_ref().map(|e| e.status()),
            ecs_api: shared.remote.as_ref().map(|e| e.status()),
            aws: shared.aws.as_ref().map(|e| e.status()),
            tags: shared.tags.clone(),
            fips: shared.fips.clone(),
            dns: shared.dns.as_ref().map(|d| d.lock().unwrap_or_else(PoisonError::into_inner).counters()),
            conntrack: shared.conntrack.as_ref().map(|c| c.status()),
            privileges: shared.privileges.clone(),
            api,
        }
    }
}

/// Routes over the shared state; `/metrics` only when `metrics` is on; every request goes
/// through the `Host` guard.
pub fn router(shared: Arc<Shared>, metrics: bool, allowed: host::AllowedHosts) -> Router {
    let guard = host::HostGuard { allowed: Arc::new(allowed), shared: shared.clone() };
    let r = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/flows", get(flows))
        .route("/dns", get(dns));
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
        let (series, aggregate) = s.series.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let dns = s
            .dns
            .as_ref()
            .map(|d| d.lock().unwrap_or_else(PoisonError::into_inner).rows_unsorted())
            .unwrap_or_default();
        let dns = crate::dns::sort_rows(dns);
        metrics::render(
            &metrics::Snapshot { series: &series, aggregate, status: &status, dns: &dns },
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
    let health = s.heartbeat.health(s.collecting.load(Ordering::SeqCst));
    let code = if health.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, format!("{}\n", health.reason())).into_response()
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

/// DNS statistics per client, server, name and type; 404 when DNS monitoring is off.
async fn dns(State(s): State<Arc<Shared>>) -> Response {
    match &s.dns {
        Some(_) => {
            let body = blocking(&s, |s| {
                let rows =
                    s.dns.as_ref().map(|d| d.lock().unwrap_or_else(PoisonError::into_inner).rows_unsorted());
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
    let answer = blocking(&s, move |s| {
        let (flows, total) = s.table().select(|r| q.matches(r), limit);
        let tagged: Vec<Tagged<'_, _>> = flows.iter().map(|f| Tagged { record: f, tags: &s.tags }).collect();
        (serde_json::to_vec(&tagged), total, flows.len())
    })
    .await;
    let (body, total, n) = match answer {
        Ok(x) => x,
        Err(r) => return r,
    };
    let truncated = if total > n { "true" } else { "false" };
    let mut response = json_body(body);
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
