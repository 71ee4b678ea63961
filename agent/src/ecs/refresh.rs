//! The rhythm of the background providers (ECS agent, task metadata, ECS API): refresh every
//! `interval`; after a failure wait twice as long as the last time, up to `max_backoff`; the
//! last good snapshot stays in place meanwhile.

use std::future::Future;
use std::time::Duration;

/// The wait before the next refresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    interval: Duration,
    max: Duration,
    wait: Duration,
}

impl Backoff {
    pub fn new(interval: Duration, max_backoff: Duration) -> Self {
        Backoff { interval, max: max_backoff.max(interval), wait: interval }
    }

    /// After a success: `interval`.
    pub fn succeeded(&mut self) -> Duration {
        self.wait = self.interval;
        self.wait
    }

    /// After a failure: twice the last wait, at most `max_backoff`.
    pub fn failed(&mut self) -> Duration {
        self.wait = self.wait.saturating_mul(2).min(self.max);
        self.wait
    }

    /// After a failure that retrying soon cannot fix (access denied): `max_backoff`.
    pub fn longest(&mut self) -> Duration {
        self.wait = self.max;
        self.wait
    }
}

/// Refreshes forever: `fetch`, then `ok` with its result or `failed` with its error, then
/// the [`Backoff`] wait.
pub async fn forever<T, E, F, Fut>(
    mut backoff: Backoff,
    mut fetch: F,
    mut ok: impl FnMut(T),
    mut failed: impl FnMut(&E),
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        let wait = match fetch().await {
            Ok(v) => {
                ok(v);
                backoff.succeeded()
            }
            Err(e) => {
                failed(&e);
                backoff.failed()
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// [`forever`] for a metadata endpoint over plain HTTP (the ECS agent, task metadata): builds
/// the client once (`provider` names it in logs), then fetches through it.
pub async fn over_http<T, E, Fut>(
    provider: &'static str,
    backoff: Backoff,
    timeout: Duration,
    mut fetch: impl FnMut(reqwest::Client) -> Fut,
    ok: impl FnMut(T),
    mut failed: impl FnMut(&E),
) where
    E: std::fmt::Display,
    Fut: Future<Output = Result<T, E>>,
{
    let client = match crate::plain_http::client(timeout) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(provider, error = %e, "cannot build an HTTP client; ECS labels stay unknown");
            return;
        }
    };
    let failed = |e: &E| {
        tracing::warn!(provider, error = %e, "refresh failed; keeping the last snapshot");
        failed(e);
    };
    forever(backoff, || fetch(client.clone()), ok, failed).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(s(10), s(60));
        assert_eq!([b.failed(), b.failed(), b.failed(), b.failed()], [s(20), s(40), s(60), s(60)]);
        assert_eq!(b.succeeded(), s(10));
        assert_eq!(b.longest(), s(60));
        assert_eq!(Backoff::new(s(90), s(60)).failed(), s(90), "the cap is never below the interval");
        assert_eq!(Backoff::new(Duration::MAX, Duration::MAX).failed(), Duration::MAX, "no overflow");
    }

    #[tokio::test]
    async fn waits_between_refreshes() {
        let results = std::sync::Mutex::new(vec![Ok(1), Err("e"), Err("e"), Ok(2)].into_iter());
        let seen = std::sync::Mutex::new(Vec::new());
        let start = tokio::time::Instant::now();
        let run = forever(
            Backoff::new(Duration::from_millis(20), Duration::from_millis(200)),
            || {
                let next = results.lock().expect("lock").next();
                async move { next.unwrap_or(Err("done")) }
            },
            |v: i32| seen.lock().expect("lock").push((v, start.elapsed())),
            |_: &&str| {},
        );
        let _ = tokio::time::timeout(Duration::from_millis(400), run).await;
        // 1 at once; the failures wait 40 ms then 80 ms; 2 after 20 + 40 + 80 = 140 ms.
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.iter().map(|(v, _)| *v).collect::<Vec<_>>(), [1, 2]);
        assert!(seen[1].1 >= Duration::from_millis(140), "{seen:?}");
    }
}
