//! Watching and hammering the agent's API during the soak.
//!
//! What: [`Probes::start`] runs three kinds of threads until [`Probes::stop`]:
//! - `/healthz` every [`PROBE_EVERY`]: answer time (max), non-200 answers and errors;
//! - `/status` every [`PROBE_EVERY`]: `last_scan_age_seconds` (when the last scan of the collector
//!   started), `liveness.last_poll_age_seconds` (the last completed poll of the collection loop), live
//!   flows; from the first the times of the scans are derived ([`scan_gaps`]);
//! - `hammer` threads that request `/flows` (largest limit, default, filtered), `/metrics` and `/dns`
//!   back to back, counting answers, errors and the slowest one.
//!
//! Limits: a scan is seen only when a `/status` answer arrives between it and the next one: if
//! `/status` itself is slower than a poll interval, a gap looks longer than it was (never shorter).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::http::http_get;

/// How often `/healthz` and `/status` are asked.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Paths the hammer threads request, in turn (thread `i` starts at entry `i`).
pub const HAMMER_PATHS: &[&str] =
    &["/flows?limit=100000", "/metrics", "/flows", "/metrics", "/flows?protocol=udp&limit=1000", "/dns"];

/// Figures gathered by the probes.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub healthz_count: u64,
    pub healthz_max: Duration,
    pub healthz_failures: u64,
    pub healthz_last_failure: Option<String>,
    /// (seconds since start when the answer arrived, last scan age, last poll age, live flows).
    pub status: Vec<(f64, f64, f64, u64)>,
    pub status_failures: u64,
    pub liveness_not_ok: u64,
    pub hammer_requests: u64,
    pub hammer_errors: u64,
    pub hammer_bytes: u64,
    pub hammer_max: Duration,
    pub hammer_last_error: Option<String>,
}

pub struct Probes {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub observed: Arc<Mutex<Observed>>,
    pub started: Instant,
}

fn with<T>(o: &Mutex<Observed>, f: impl FnOnce(&mut Observed) -> T) -> T {
    f(&mut o.lock().unwrap_or_else(PoisonError::into_inner))
}

impl Probes {
    pub fn start(addr: SocketAddr, started: Instant) -> Probes {
        Probes {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            observed: Arc::default(),
            started,
        }
        .spawn("probe-healthz", move |o, _| healthz(addr, o))
        .spawn("probe-status", move |o, t0| status(addr, o, t0))
    }

    fn spawn(mut self, name: &str, f: impl Fn(&Mutex<Observed>, Instant) + Send + 'static) -> Probes {
        let (stop, o, t0) = (Arc::clone(&self.stop), Arc::clone(&self.observed), self.started);
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let begun = Instant::now();
                    f(&o, t0);
                    std::thread::sleep(PROBE_EVERY.saturating_sub(begun.elapsed()));
                }
            })
            .expect("spawn a probe thread");
        self.threads.push(handle);
        self
    }

    /// Adds `n` hammer threads.
    pub fn hammer(mut self, addr: SocketAddr, n: usize) -> Probes {
        for i in 0..n {
            let (stop, o) = (Arc::clone(&self.stop), Arc::clone(&self.observed));
            let handle = std::thread::Builder::new()
                .name(format!("hammer-{i}"))
                .spawn(move || {
                    let mut k = i;
                    while !stop.load(Ordering::Relaxed) {
                        let path = HAMMER_PATHS[k % HAMMER_PATHS.len()];
                        k += 1;
                        let begun = Instant::now();
                        let r = http_get(addr, path, Duration::from_secs(60));
                        let took = begun.elapsed();
                        if r.is_err() {
                            // The agent is gone or refusing: don't spin.
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        with(&o, |o| {
                            o.hammer_requests += 1;
                            o.hammer_max = o.hammer_max.max(took);
                            match r {
                                Ok(r) if r.status == 200 => o.hammer_bytes += r.body.len() as u64,
                                Ok(r) => {
                                    o.hammer_errors += 1;
                                    o.hammer_last_error =
                                        Some(format!("{path}: {} {}", r.status, r.text().trim()));
                                }
                                Err(e) => {
                                    o.hammer_errors += 1;
                                    o.hammer_last_error = Some(format!("{path}: {e}"));
                                }
                            }
                        });
                    }
                })
                .expect("spawn a hammer thread");
            self.threads.push(handle);
        }
        self
    }

    /// Stops the hammer and probe threads and returns what they saw.
    pub fn stop(&mut self) -> Observed {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        with(&self.observed, |o| o.clone())
    }

    pub fn snapshot(&self) -> Observed {
        with(&self.observed, |o| o.clone())
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.stop();
    }
}

fn healthz(addr: SocketAddr, o: &Mutex<Observed>) {
    let begun = Instant::now();
    let r = http_get(addr, "/healthz", Duration::from_secs(10));
    let took = begun.elapsed();
    with(o, |o| {
        o.healthz_count += 1;
        o.healthz_max = o.healthz_max.max(took);
        let failure = match r {
            Ok(r) if r.status == 200 => None,
            Ok(r) => Some(format!("{} {}", r.status, r.text().trim())),
            Err(e) => Some(e.to_string()),
        };
        if let Some(f) = failure {
            o.healthz_failures += 1;
            o.healthz_last_failure = Some(f);
        }
    });
}

fn status(addr: SocketAddr, o: &Mutex<Observed>, t0: Instant) {
    let r = http_get(addr, "/status", Duration::from_secs(10));
    let at = t0.elapsed().as_secs_f64();
    let doc = r
        .ok()
        .filter(|r| r.status == 200)
        .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok());
    with(o, |o| match doc {
        Some(s) => {
            if s["liveness"]["state"] != "ok" {
                o.liveness_not_ok += 1;
            }
            o.status.push((
                at,
                s["last_scan_age_seconds"].as_f64().unwrap_or(f64::INFINITY),
                s["liveness"]["last_poll_age_seconds"].as_f64().unwrap_or(f64::INFINITY),
                s["flows"]["live_flows"].as_u64().unwrap_or(0),
            ));
        }
        None => o.status_failures += 1,
    });
}

/// Gaps (seconds) between consecutive scans derived from `/status` samples `(arrival, age, ..)`
/// taken after `from` seconds: scan time = arrival − age; times within 0.2 s are one scan.
pub fn scan_gaps(samples: &[(f64, f64, f64, u64)], from: f64) -> Vec<f64> {
    let mut scans: Vec<f64> =
        samples.iter().filter(|s| s.0 >= from && s.1.is_finite()).map(|s| s.0 - s.1).collect();
    scans.sort_by(f64::total_cmp);
    let mut distinct: Vec<f64> = Vec::new();
    for t in scans {
        if distinct.last().is_none_or(|last| t - last > 0.2) {
            distinct.push(t);
        }
    }
    distinct.windows(2).map(|w| w[1] - w[0]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_come_from_arrival_minus_age() {
        // Scans at 1.0, 2.0, 4.0 (one missed at 3.0), sampled every 0.25 s with small jitter.
        let samples = [
            (1.1, 0.1, 0.0, 0),
            (1.6, 0.6, 0.0, 0),
            (2.2, 0.21, 0.0, 0),
            (3.5, 1.5, 0.0, 0),
            (4.3, 0.3, 0.0, 0),
        ];
        let gaps = scan_gaps(&samples, 0.0);
        assert_eq!(gaps.len(), 2, "{gaps:?}");
        assert!((gaps[0] - 0.99).abs() < 0.02 && (gaps[1] - 2.01).abs() < 0.02, "{gaps:?}");
        assert!(scan_gaps(&samples, 2.0).len() == 1);
    }
}
