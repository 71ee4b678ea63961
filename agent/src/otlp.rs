//! OTLP/HTTP metrics export (protobuf, gzip) of the aggregated series.
//!
//! What: every `export_interval` the collection loop hands the series snapshot
//! to a bounded queue ([`OtlpQueue::offer`], never blocking: a full queue drops
//! the batch and counts it); a task on the agent's runtime encodes it
//! ([`encode`]) with the OpenTelemetry proto types and POSTs it to
//! `otlp_endpoint`, with optional headers (e.g. authorization).
//!
//! How: cumulative temporality (like `/metrics`), so a dropped batch loses no
//! traffic, only resolution: the next one carries the totals. Failures are
//! retried with exponential backoff and jitter (1 s doubling to `otlp_max_backoff`), honouring
//! `Retry-After`; 4xx answers other than 408/429 are not retried (counted as
//! rejected). Attributes follow OpenTelemetry semantic conventions where one
//! exists (`network.transport`, `network.type`, `network.local.address`,
//! `network.peer.address`, `server.port`, `network.io.direction`, `error.type`).
//!
//! Redirects are never followed (in FIPS mode one would bypass `eddy-fips-proxy`, and a
//! redirect must not carry the configured headers to another host): a 3xx answer is an
//! error, not retried, counted in `redirects_refused` (and `batches_rejected`), logged with
//! its `Location` redacted. Answers' bodies are read up to [`RESPONSE_MAX_BYTES`]; a larger
//! one is not read (counted in `responses_oversized`). The endpoint is logged only through
//! [`crate::redact::url`] (userinfo and query values masked), and transport errors without
//! their URL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::aggregate::{SeriesSnapshot, TransferSnapshot};

mod encode;

pub use encode::{Resource, encode};

/// Counters of the exporter, for `/status` and `/metrics`.
#[derive(Debug, Default)]
pub struct OtlpStats {
    pub batches_sent: AtomicU64,
    /// Batches not queued because the queue was full (the endpoint is slow or down).
    pub batches_dropped: AtomicU64,
    /// Batches the endpoint refused for good (4xx other than 408/429).
    pub batches_rejected: AtomicU64,
    /// Failed attempts (connection errors, 5xx, 408, 429), each followed by a backoff.
    pub attempts_failed: AtomicU64,
    pub queued: AtomicU64,
    /// 3xx answers (redirects are never followed; the batch is rejected).
    pub redirects_refused: AtomicU64,
    /// Answers whose body exceeded [`RESPONSE_MAX_BYTES`] (not read).
    pub responses_oversized: AtomicU64,
}

/// A snapshot of [`OtlpStats`].
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct OtlpCounts {
    pub batches_sent: u64,
    pub batches_dropped: u64,
    pub batches_rejected: u64,
    pub attempts_failed: u64,
    pub queued: u64,
    pub redirects_refused: u64,
    pub responses_oversized: u64,
}

impl OtlpStats {
    pub fn counts(&self) -> OtlpCounts {
        OtlpCounts {
            batches_sent: self.batches_sent.load(Ordering::Relaxed),
            batches_dropped: self.batches_dropped.load(Ordering::Relaxed),
            batches_rejected: self.batches_rejected.load(Ordering::Relaxed),
            attempts_failed: self.attempts_failed.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            redirects_refused: self.redirects_refused.load(Ordering::Relaxed),
            responses_oversized: self.responses_oversized.load(Ordering::Relaxed),
        }
    }
}

/// One batch: the series totals at `time`.
#[derive(Clone, Debug)]
pub struct Batch {
    pub series: SeriesSnapshot,
    /// Cross-AZ and NAT gateway transfer per workload pair (totals since start).
    pub transfers: TransferSnapshot,
    pub time: SystemTime,
    /// DNS rows (totals since the agent started), when DNS monitoring is on.
    pub dns: Arc<Vec<crate::dns::DnsRow>>,
}

/// The producer side of the bounded queue.
#[derive(Clone, Debug)]
pub struct OtlpQueue {
    tx: mpsc::Sender<Batch>,
    stats: Arc<OtlpStats>,
}

impl OtlpQueue {
    /// Queues a batch without waiting; a full queue drops it (counted).
    pub fn offer(&self, batch: Batch) {
        match self.tx.try_send(batch) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.batches_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Exporter settings.
#[derive(Clone, Debug)]
pub struct OtlpSettings {
    /// Full URL of the metrics endpoint (`…/v1/metrics`).
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    /// Longest wait between retries (the backoff starts at 1 s and doubles).
    pub max_backoff: Duration,
    pub queue_batches: usize,
    pub resource: Resource,
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("OTLP client: {0}")]
    Client(String),
    #[error("otlp_headers: {0}")]
    Header(String),
}

const BACKOFF_START: Duration = Duration::from_secs(1);

/// Largest OTLP answer body read (64 KiB): a success carries at most a short partial-success
/// message, an error a status message.
pub const RESPONSE_MAX_BYTES: usize = 64 << 10;

/// Builds the queue and the sending task (to be spawned on the agent's runtime).
pub fn start(
    settings: OtlpSettings,
    stats: Arc<OtlpStats>,
) -> Result<(OtlpQueue, impl std::future::Future<Output = ()>), OtlpError> {
    let client = reqwest::Client::builder()
        .timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(header_map(&settings.headers)?)
        .build()
        .map_err(|e| OtlpError::Client(e.to_string()))?;
    let (tx, rx) = mpsc::channel(settings.queue_batches.max(1));
    let queue = OtlpQueue { tx, stats: stats.clone() };
    Ok((queue, send_loop(client, settings, rx, stats)))
}

/// The configured headers (validated with the configuration; checked again here).
fn header_map(headers: &[(String, String)]) -> Result<reqwest::header::HeaderMap, OtlpError> {
    use reqwest::header::{HeaderName, HeaderValue};
    let mut map = reqwest::header::HeaderMap::new();
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| OtlpError::Header(format!("{k:?} is not a valid HTTP header name")))?;
        let mut value = HeaderValue::from_str(v).map_err(|_| {
            OtlpError::Header(format!("the value of header {k:?} is not a valid HTTP header value"))
        })?;
        value.set_sensitive(true);
        map.append(name, value);
    }
    Ok(map)
}

async fn send_loop(
    client: reqwest::Client,
    settings: OtlpSettings,
    mut rx: mpsc::Receiver<Batch>,
    stats: Arc<OtlpStats>,
) {
    let start_time = SystemTime::now();
    let endpoint = crate::redact::url(&settings.endpoint);
    let mut backoff = BACKOFF_START;
    while let Some(batch) = rx.recv().await {
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        let body = match gzip(&encode(
            &batch.series,
            &batch.transfers,
            &batch.dns,
            &settings.resource,
            start_time,
            batch.time,
        )) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "OTLP: cannot compress a batch; dropped");
                stats.batches_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        loop {
            match post(&client, &settings, body.clone(), &stats).await {
                Outcome::Sent => {
                    stats.batches_sent.fetch_add(1, Ordering::Relaxed);
                    backoff = BACKOFF_START;
                    break;
                }
                Outcome::Redirect { status, location } => {
                    tracing::warn!(
                        %endpoint,
                        status,
                        location = %location.as_deref().map_or_else(|| "(none)".into(), crate::redact::url),
                        "OTLP: the endpoint answered with a redirect, which is never followed; batch \
                         rejected (set otlp_endpoint to the final URL)"
                    );
                    stats.redirects_refused.fetch_add(1, Ordering::Relaxed);
                    stats.batches_rejected.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Outcome::Rejected(why) => {
                    tracing::warn!(%endpoint, %why, "OTLP: batch rejected; not retried");
                    stats.batches_rejected.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Outcome::Retry { why, after } => {
                    stats.attempts_failed.fetch_add(1, Ordering::Relaxed);
                    let wait = after.unwrap_or_else(|| jitter(backoff)).min(settings.max_backoff);
                    tracing::warn!(%endpoint, %why, retry_in = ?wait, "OTLP: export failed");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(settings.max_backoff);
                }
            }
        }
    }
}

enum Outcome {
    Sent,
    Rejected(String),
    Redirect { status: u16, location: Option<String> },
    Retry { why: String, after: Option<Duration> },
}

async fn post(client: &reqwest::Client, s: &OtlpSettings, body: Vec<u8>, stats: &OtlpStats) -> Outcome {
    let req = client
        .post(&s.endpoint)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(body);
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Retry { why: error_chain(e), after: None },
    };
    let status = resp.status();
    if status.is_redirection() {
        let location =
            resp.headers().get("location").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        return Outcome::Redirect { status: status.as_u16(), location };
    }
    let after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    // The body is read (bounded) so that the connection can be reused; its content is not used.
    if let Err(crate::body::BodyError::TooLarge { limit }) =
        crate::body::read_capped(resp, RESPONSE_MAX_BYTES).await
    {
        stats.responses_oversized.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(limit, "OTLP: answer body larger than the cap; not read");
    }
    if status.is_success() {
        return Outcome::Sent;
    }
    let why = format!("HTTP {status}");
    if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
        Outcome::Retry { why, after }
    } else {
        Outcome::Rejected(why)
    }
}

/// A transport error and its causes, without the URL (it may carry credentials).
fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// 50–150 % of `d`, from the clock's nanoseconds (no RNG dependency needed).
fn jitter(d: Duration) -> Duration {
    let nanos =
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|t| t.subsec_nanos()).unwrap_or(0);
    d.mul_f64(0.5 + f64::from(nanos % 1000) / 1000.0)
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data)?;
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_one_and_a_half() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(10));
            assert!(j >= Duration::from_secs(5) && j <= Duration::from_secs(15), "{j:?}");
        }
    }

    #[test]
    fn full_queue_counts_drops_without_blocking() {
        let stats = Arc::new(OtlpStats::default());
        let (tx, _rx) = mpsc::channel(1);
        let q = OtlpQueue { tx, stats: stats.clone() };
        for _ in 0..3 {
            q.offer(Batch {
                series: Arc::new(Vec::new()),
                transfers: Arc::default(),
                time: SystemTime::now(),
                dns: Arc::default(),
            });
        }
        let c = stats.counts();
        assert_eq!((c.queued, c.batches_dropped), (1, 2));
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let z = gzip(b"hello").expect("gzip");
        let mut out = String::new();
        flate2::read::GzDecoder::new(&z[..]).read_to_string(&mut out).expect("gunzip");
        assert_eq!(out, "hello");
    }
}
