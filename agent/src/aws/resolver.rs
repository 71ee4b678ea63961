//! Remote address → ENI owner, resolved in the background with bounded cost.
//!
//! The data path calls [`AwsResolver::lookup`]: it reads the cache (a stale entry is
//! still served while it is refreshed) and, on a miss, queues the address — never
//! waiting. A background loop ([`AwsResolver::run`]) drains the queue in batches of
//! [`BATCH`] addresses per API call, within a call budget (a token bucket of
//! `calls_per_second`), and caches answers — found (`positive_ttl`) and not found
//! (`negative_ttl`). An address queued or in flight is not queued again (single
//! flight). Throttling backs off (doubling, up to `max_backoff`) and retries the batch;
//! access denied switches resolution off with one clear log line and a status entry.
//! Queue and cache are bounded; what does not fit is counted.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::classify::Owner;
use super::error::ApiError as DiscoveryError;

/// Addresses per API call (well within the EC2 filter-value limit).
pub const BATCH: usize = 100;

/// One ENI, as the resolver needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniRecord {
    pub addrs: Vec<IpAddr>,
    pub owner: Owner,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    pub availability_zone: Option<String>,
}

use crate::flow::RemoteAws;

impl From<&EniRecord> for RemoteAws {
    fn from(e: &EniRecord) -> Self {
        RemoteAws {
            kind: e.owner.kind,
            name: e.owner.name.clone(),
            id: e.owner.id.clone(),
            vpc: e.vpc_id.clone(),
            subnet: e.subnet_id.clone(),
            availability_zone: e.availability_zone.clone(),
        }
    }
}

/// Future returned by an [`EniSource`].
pub type EniFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<EniRecord>, DiscoveryError>> + Send + 'a>>;

/// Where ENIs come from: the EC2 API, or a test fake.
pub trait EniSource: Send + Sync {
    /// The ENIs holding any of `addrs` (one API call).
    fn describe(&self, addrs: &[IpAddr]) -> EniFuture<'_>;
}

/// Limits and timings.
#[derive(Clone, Debug)]
pub struct ResolverSettings {
    pub calls_per_second: f64,
    pub positive_ttl: Duration,
    pub negative_ttl: Duration,
    pub max_backoff: Duration,
    pub max_queue: usize,
    pub max_cache: usize,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        ResolverSettings {
            calls_per_second: 5.0,
            positive_ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(300),
            max_backoff: Duration::from_secs(60),
            max_queue: 10_000,
            max_cache: 100_000,
        }
    }
}

/// Counters for `/status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ResolverStatus {
    pub api_calls: u64,
    pub addresses_resolved: u64,
    pub addresses_not_found: u64,
    pub queued: u64,
    pub queue_dropped: u64,
    pub cache_entries: u64,
    pub cache_evicted: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub last_error: Option<String>,
    /// Why resolution is off (access denied), if it is.
    pub disabled: Option<String>,
}

/// What the resolver knows of an address.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    Found(Arc<RemoteAws>),
    /// No ENI holds it (as of the last answer), or it cannot be asked (resolution off, queue full).
    NotFound,
    /// Queued or in flight: an answer is coming.
    Pending,
}

#[derive(Clone, Debug)]
struct Entry {
    value: Option<Arc<RemoteAws>>,
    expires: Instant,
}

#[derive(Default)]
struct Queue {
    order: VecDeque<IpAddr>,
    /// Queued or in flight.
    pending: HashSet<IpAddr>,
}

/// The resolver: a cache the data path reads and a queue it fills.
pub struct AwsResolver {
    settings: ResolverSettings,
    cache: RwLock<HashMap<IpAddr, Entry>>,
    queue: Mutex<Queue>,
    wake: tokio::sync::Notify,
    status: Mutex<ResolverStatus>,
}

impl AwsResolver {
    pub fn new(settings: ResolverSettings) -> Self {
        AwsResolver {
            settings,
            cache: RwLock::default(),
            queue: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            status: Mutex::default(),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, ResolverStatus> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The owner of `ip` if known (possibly stale while being refreshed); queues it otherwise.
    pub fn lookup(&self, ip: IpAddr) -> Option<Arc<RemoteAws>> {
        match self.resolve(ip) {
            Lookup::Found(a) => Some(a),
            Lookup::NotFound | Lookup::Pending => None,
        }
    }

    /// What is known of `ip` (possibly stale while being refreshed); queues it when nothing
    /// fresh is.
    pub fn resolve(&self, ip: IpAddr) -> Lookup {
        let (value, fresh) = match self.cache.read().unwrap_or_else(PoisonError::into_inner).get(&ip) {
            Some(e) => (Some(e.value.clone()), e.expires > Instant::now()),
            None => (None, false),
        };
        let asked = !fresh && self.request(ip);
        match value {
            Some(Some(a)) => Lookup::Found(a),
            Some(None) => Lookup::NotFound,
            None if asked => Lookup::Pending,
            None => Lookup::NotFound,
        }
    }

    /// Queues `ip` unless it is queued or in flight; whether it is now (false: resolution is
    /// off, or the queue is full).
    fn request(&self, ip: IpAddr) -> bool {
        if self.st().disabled.is_some() {
            return false;
        }
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.pending.contains(&ip) {
            return true;
        }
        if q.order.len() >= self.settings.max_queue {
            drop(q);
            self.st().queue_dropped += 1;
            return false;
        }
        q.pending.insert(ip);
        q.order.push_back(ip);
        drop(q);
        self.st().queued += 1;
        self.wake.notify_one();
        true
    }

    pub fn status(&self) -> ResolverStatus {
        let mut s = self.st().clone();
        s.cache_entries = self.cache.read().unwrap_or_else(PoisonError::into_inner).len() as u64;
        s
    }

    fn take_batch(&self) -> Vec<IpAddr> {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let n = q.order.len().min(BATCH);
        q.order.drain(..n).collect()
    }

    fn settle(&self, batch: &[IpAddr]) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        for ip in batch {
            q.pending.remove(ip);
        }
    }

    fn requeue_front(&self, batch: &[IpAddr]) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        for ip in batch.iter().rev() {
            q.order.push_front(*ip);
        }
    }

    #[cfg(test)]
    pub(crate) fn store_for_test(&self, batch: &[IpAddr], enis: &[EniRecord]) {
        self.store(batch, enis);
    }

    fn store(&self, batch: &[IpAddr], enis: &[EniRecord]) {
        let now = Instant::now();
        let mut found = 0u64;
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        for ip in batch {
            let eni = enis.iter().find(|e| e.addrs.contains(ip));
            found += u64::from(eni.is_some());
            let (value, ttl) = match eni {
                Some(e) => (Some(Arc::new(RemoteAws::from(e))), self.settings.positive_ttl),
                None => (None, self.settings.negative_ttl),
            };
            cache.insert(*ip, Entry { value, expires: now + ttl });
        }
        let mut evicted = 0u64;
        if cache.len() > self.settings.max_cache {
            cache.retain(|_, e| e.expires > now);
            while cache.len() > self.settings.max_cache {
                let Some(oldest) = cache.iter().min_by_key(|(_, e)| e.expires).map(|(ip, _)| *ip) else {
                    break;
                };
                cache.remove(&oldest);
                evicted += 1;
            }
        }
        drop(cache);
        let mut st = self.st();
        st.addresses_resolved += found;
        st.addresses_not_found += batch.len() as u64 - found;
        st.cache_evicted += evicted;
    }

    /// Resolves queued addresses until the runtime shuts down.
    pub async fn run(self: Arc<Self>, source: Arc<dyn EniSource>) {
        let s = self.settings.clone();
        let interval = Duration::from_secs_f64(1.0 / s.calls_per_second.max(0.001));
        let burst = s.calls_per_second.max(1.0);
        let (mut tokens, mut refilled) = (burst, Instant::now());
        let mut backoff = Duration::ZERO;
        loop {
            let batch = self.take_batch();
            if batch.is_empty() {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
                continue;
            }
            // Token bucket: `calls_per_second`, bursts up to one second's worth.
            tokens = (tokens + refilled.elapsed().as_secs_f64() * s.calls_per_second).min(burst);
            refilled = Instant::now();
            if tokens < 1.0 {
                tokio::time::sleep(interval.mul_f64(1.0 - tokens)).await;
                tokens = 1.0;
                refilled = Instant::now();
            }
            tokens -= 1.0;
            self.st().api_calls += 1;
            match source.describe(&batch).await {
                Ok(enis) => {
                    self.store(&batch, &enis);
                    self.settle(&batch);
                    backoff = Duration::ZERO;
                }
                Err(e) => {
                    {
                        let mut st = self.st();
                        *st.errors.entry(e.kind()).or_default() += 1;
                        st.last_error = Some(e.to_string());
                    }
                    match e {
                        DiscoveryError::AccessDenied { .. } => {
                            tracing::error!(error = %e, "AWS resolution off");
                            self.st().disabled = Some(e.to_string());
                            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                            q.order.clear();
                            q.pending.clear();
                            return;
                        }
                        DiscoveryError::Throttled { .. } => self.requeue_front(&batch),
                        // Other failures: forget the batch; the addresses are asked again when seen again.
                        _ => self.settle(&batch),
                    }
                    backoff = (backoff * 2).clamp(Duration::from_millis(200), s.max_backoff);
                    tracing::warn!(error = %e, backoff = ?backoff, "AWS resolution: API call failed");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
