//! `Host` allow-list against DNS rebinding: a web page on `evil.example` whose name is made to
//! resolve to 127.0.0.1 reaches the API with `Host: evil.example:9780`, which is refused.
//!
//! Allowed: `localhost`, `127.0.0.1`, `[::1]` and the literal `listen` address, each without a
//! port or with the `listen` port, plus the `api_allowed_hosts` entries (`name`: without a port
//! or with the `listen` port; `name:port`: exactly; `*`: anything). A request without `Host`
//! (HTTP/1.0 probes) is let through: rebinding always carries one.
//!
//! Limits: names compare case-insensitively and literally (no wildcards besides `*`). The list
//! itself is [`crate::allowed_hosts`] (the configuration validates entries with it too).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use crate::allowed_hosts::AllowedHosts;
use crate::state::ApiStats;

/// The guard state: the list and where to count refusals.
#[derive(Clone)]
pub struct HostGuard {
    pub allowed: Arc<AllowedHosts>,
    pub stats: Arc<ApiStats>,
}

/// Middleware: `421 Misdirected Request` for a `Host` that is not allowed.
pub async fn guard(State(g): State<HostGuard>, req: Request, next: Next) -> Response {
    let host = req.headers().get(header::HOST).map(|h| h.to_str().unwrap_or("\u{fffd}"));
    match host {
        Some(h) if !g.allowed.permits(h) => {
            g.stats.host_rejected.fetch_add(1, Ordering::Relaxed);
            (
                StatusCode::MISDIRECTED_REQUEST,
                "Host not allowed: use localhost/127.0.0.1/[::1] with the API port, or add the name to \
                 api_allowed_hosts\n",
            )
                .into_response()
        }
        _ => next.run(req).await,
    }
}
