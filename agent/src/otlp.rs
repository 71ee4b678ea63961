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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::aggregate::SeriesSnapshot;

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
}

/// A snapshot of [`OtlpStats`].
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct OtlpCounts {
    pub batches_sent: u64,
    pub batches_dropped: u64,
    pub batches_rejected: u64,
    pub attempts_failed: u64,
    pub queued: u64,
}

impl OtlpStats {
    pub fn counts(&self) -> OtlpCounts {
        OtlpCounts {
            batches_sent: self.batches_sent.load(Ordering::Relaxed),
            batches_dropped: self.batches_dropped.load(Ordering::Relaxed),
            batches_rejected: self.batches_rejected.load(Ordering::Relaxed),
            attempts_failed: self.attempts_failed.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
        }
    }
}

/// One batch: the series totals at `time`.
#[derive(Clone, Debug)]
pub struct Batch {
    pub series: SeriesSnapshot,
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
}

const BACKOFF_START: Duration = Duration::from_secs(1);

/// Builds the queue and the sending task (to be spawned on the agent's runtime).
pub fn start(
    settings: OtlpSettings,
    stats: Arc<OtlpStats>,
) -> Result<(OtlpQueue, impl std::future::Future<Output = ()>), OtlpError> {
    let client = reqwest::Client::builder()
        .timeout(settings.timeout)
        .build()
        .map_err(|e| OtlpError::Client(e.to_string()))?;
    let (tx, rx) = mpsc::channel(settings.queue_batches.max(1));
    let queue = OtlpQueue { tx, stats: stats.clone() };
    Ok((queue, send_loop(client, settings, rx, stats)))
}

async fn send_loop(
    client: reqwest::Client,
    settings: OtlpSettings,
    mut rx: mpsc::Receiver<Batch>,
    stats: Arc<OtlpStats>,
) {
    let start_time = SystemTime::now();
    let mut backoff = BACKOFF_START;
    while let Some(batch) = rx.recv().await {
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        let body = match gzip(&encode(&batch.series, &batch.dns, &settings.resource, start_time, batch.time))
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "OTLP: cannot compress a batch; dropped");
                stats.batches_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        loop {
            match post(&client, &settings, body.clone()).await {
                Outcome::Sent => {
                    stats.batches_sent.fetch_add(1, Ordering::Relaxed);
                    backoff = BACKOFF_START;
                    break;
                }
                Outcome::Rejected(why) => {
                    tracing::warn!(endpoint = %settings.endpoint, %why, "OTLP: batch rejected; not retried");
                    stats.batches_rejected.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Outcome::Retry { why, after } => {
                    stats.attempts_failed.fetch_add(1, Ordering::Relaxed);
                    let wait = after.unwrap_or_else(|| jitter(backoff)).min(settings.max_backoff);
                    tracing::warn!(endpoint = %settings.endpoint, %why, retry_in = ?wait, "OTLP: export failed");
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
    Retry { why: String, after: Option<Duration> },
}

async fn post(client: &reqwest::Client, s: &OtlpSettings, body: Vec<u8>) -> Outcome {
    let mut req = client
        .post(&s.endpoint)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(body);
    for (k, v) in &s.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Retry { why: e.to_string(), after: None },
    };
    let status = resp.status();
    if status.is_success() {
        return Outcome::Sent;
    }
    let after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let why = format!("HTTP {status}");
    if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
        Outcome::Retry { why, after }
    } else {
        Outcome::Rejected(why)
    }
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
            q.offer(Batch { series: Arc::new(Vec::new()), time: SystemTime::now(), dns: Arc::default() });
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
