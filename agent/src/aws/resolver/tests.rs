use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::flow::OwnerKind;

/// A fake EC2: knows the addresses of `known`, records every call, fails the first `throttle` calls,
/// or denies access.
#[derive(Default)]
struct FakeEc2 {
    known: HashSet<IpAddr>,
    calls: Mutex<Vec<(Instant, usize)>>,
    throttle: AtomicUsize,
    /// Calls that find the endpoint down before it answers.
    down: AtomicUsize,
    deny: bool,
}

impl EniSource for FakeEc2 {
    fn describe(&self, addrs: &[IpAddr]) -> EniFuture<'_> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).push((Instant::now(), addrs.len()));
        let addrs = addrs.to_vec();
        Box::pin(async move {
            if self.deny {
                return Err(DiscoveryError::AccessDenied {
                    action: "ec2:DescribeNetworkInterfaces",
                    message: "not authorized".into(),
                });
            }
            if self.down.load(Ordering::SeqCst) > 0 {
                self.down.fetch_sub(1, Ordering::SeqCst);
                return Err(DiscoveryError::Unreachable {
                    action: "ec2:DescribeNetworkInterfaces",
                    message: "connection refused".into(),
                });
            }
            if self.throttle.load(Ordering::SeqCst) > 0 {
                self.throttle.fetch_sub(1, Ordering::SeqCst);
                return Err(DiscoveryError::Throttled {
                    action: "ec2:DescribeNetworkInterfaces",
                    message: "slow down".into(),
                });
            }
            Ok(addrs
                .into_iter()
                .filter(|a| self.known.contains(a))
                .map(|a| EniRecord {
                    addrs: vec![a],
                    owner: Owner {
                        kind: OwnerKind::Alb,
                        name: Some("web".into()),
                        id: Some("app/web/1".into()),
                    },
                    vpc_id: Some("vpc-1".into()),
                    subnet_id: None,
                    availability_zone: Some("us-east-1a".into()),
                })
                .collect())
        })
    }
}

fn ip(i: u32) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))
}

fn start(fake: Arc<FakeEc2>, settings: ResolverSettings) -> Arc<AwsResolver> {
    let r = Arc::new(AwsResolver::new(settings));
    tokio::spawn(r.clone().run(fake));
    r
}

async fn settle(r: &AwsResolver, until: impl Fn(&ResolverStatus) -> bool) -> ResolverStatus {
    for _ in 0..400 {
        let s = r.status();
        if until(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not settled: {:?}", r.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_addresses_cost_one_call_per_batch_within_the_budget() {
    let fake = Arc::new(FakeEc2 { known: (0..50).map(ip).collect(), ..Default::default() });
    let r = Arc::new(AwsResolver::new(ResolverSettings { calls_per_second: 20.0, ..Default::default() }));
    // 2,000 distinct addresses, each seen five times (queued before the loop starts, so that every
    // batch is full): 20 calls, never more than the budget's burst at once.
    for _ in 0..5 {
        for i in 0..2_000 {
            // Returns at once: found, not found, or queued.
            r.lookup(ip(i));
        }
    }
    tokio::spawn(r.clone().run(fake.clone()));
    let s = settle(&r, |s| s.addresses_resolved + s.addresses_not_found == 2_000).await;
    let calls = fake.calls.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert_eq!(calls.len(), 20, "one call per {BATCH} addresses: {calls:?}");
    assert!(calls.iter().all(|(_, n)| *n == BATCH));
    assert_eq!((s.addresses_resolved, s.addresses_not_found, s.queued), (50, 1_950, 2_000));
    // Budget: no one-second window holds more than the burst (one second's worth) plus one.
    for (i, (t, _)) in calls.iter().enumerate() {
        let in_window =
            calls[i..].iter().take_while(|(u, _)| u.duration_since(*t) < Duration::from_secs(1)).count();
        assert!(in_window <= 21, "{in_window} calls within a second");
    }
    // Cached, found or not: no more calls.
    assert_eq!(r.lookup(ip(7)).map(|a| a.kind), Some(OwnerKind::Alb));
    assert!(r.lookup(ip(1_500)).is_none());
    assert_eq!(r.resolve(ip(1_500)), Lookup::NotFound, "not an ENI, as of the answer");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.calls.lock().unwrap_or_else(PoisonError::into_inner).len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_backs_off_and_retries_the_batch() {
    let fake =
        Arc::new(FakeEc2 { known: [ip(1)].into(), throttle: AtomicUsize::new(2), ..Default::default() });
    let r = start(fake.clone(), ResolverSettings::default());
    assert!(r.lookup(ip(1)).is_none());
    assert_eq!(r.resolve(ip(1)), Lookup::Pending, "queued or in flight: an answer is coming");
    let s = settle(&r, |s| s.addresses_resolved == 1).await;
    assert_eq!(s.errors.get("throttled"), Some(&2));
    assert!(matches!(r.resolve(ip(1)), Lookup::Found(_)));
    assert_eq!(r.lookup(ip(1)).and_then(|a| a.name.clone()).as_deref(), Some("web"));
    assert_eq!(fake.calls.lock().unwrap_or_else(PoisonError::into_inner).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_switches_resolution_off() {
    let fake = Arc::new(FakeEc2 { deny: true, ..Default::default() });
    let r = start(fake.clone(), ResolverSettings::default());
    r.lookup(ip(1));
    let s = settle(&r, |s| s.disabled.is_some()).await;
    assert!(s.disabled.as_deref().is_some_and(|d| d.contains("ec2:DescribeNetworkInterfaces")), "{s:?}");
    for i in 0..100 {
        assert!(r.lookup(ip(i)).is_none());
    }
    assert_eq!(r.resolve(ip(200)), Lookup::NotFound, "off: nothing is coming");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.calls.lock().unwrap_or_else(PoisonError::into_inner).len(), 1, "no calls once off");
}

#[test]
fn queue_and_cache_are_bounded() {
    let r = AwsResolver::new(ResolverSettings { max_queue: 100, max_cache: 10, ..Default::default() });
    for i in 0..150 {
        r.lookup(ip(i));
    }
    let s = r.status();
    assert_eq!((s.queued, s.queue_dropped), (100, 50));
    let batch = r.take_batch();
    r.store(&batch, &[]);
    let s = r.status();
    assert_eq!((s.cache_entries, s.cache_evicted, s.addresses_not_found), (10, 90, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_down_is_counted_and_the_address_asked_again_when_seen_again() {
    let fake = Arc::new(FakeEc2 { known: [ip(1)].into(), down: AtomicUsize::new(1), ..Default::default() });
    let r = start(fake.clone(), ResolverSettings::default());
    assert!(r.lookup(ip(1)).is_none());
    let s = settle(&r, |s| s.errors.get("unreachable") == Some(&1)).await;
    assert_eq!(s.addresses_resolved, 0, "the failed batch is dropped, not cached");
    // Seen again after the backoff: asked again, and found.
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.lookup(ip(1));
    settle(&r, |s| s.addresses_resolved == 1).await;
    assert_eq!(r.lookup(ip(1)).map(|a| a.kind), Some(OwnerKind::Alb));
}
