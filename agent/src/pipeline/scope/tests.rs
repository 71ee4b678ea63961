use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;
use crate::collector::{Batch, Observed};
use crate::flow::{FlowRecord, Protocol};

/// A directory under the system's temporary directory, removed on drop.
struct Tmp(std::path::PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("eddy-scope-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("mkdir");
        Tmp(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ino(p: &Path) -> u64 {
    std::fs::metadata(p).expect("stat").ino()
}

fn obs(cookie: u64, cgroup: Option<u64>) -> Observed {
    let mut record = FlowRecord::test(Protocol::Tcp, cookie, false);
    record.cgroup_id = cgroup;
    Observed { record, last_ns: 0 }
}

fn cookies(b: &Batch) -> Vec<u64> {
    b.closed.iter().chain(b.live.iter().flatten()).map(|o| o.record.cookie).collect()
}

#[test]
fn keeps_the_subtree_finds_new_cgroups_and_walks_once_per_outside_id() {
    let tmp = Tmp::new("keeps");
    let scope = tmp.path().join("instance-a");
    let task = scope.join("ecs/task1/c1");
    std::fs::create_dir_all(&task).expect("mkdir");
    let other = tmp.path().join("instance-b/ecs/task2/c2");
    std::fs::create_dir_all(&other).expect("mkdir");
    let mut s = CgroupScope::new(scope.clone());
    assert_eq!((s.status.walks, s.status.exists, s.status.cgroups_inside), (1, true, 4));

    let t0 = Instant::now();
    let mut b = Batch {
        closed: vec![obs(1, Some(ino(&task))), obs(2, Some(ino(&other))), obs(3, None)],
        live: Some(vec![obs(4, Some(ino(&scope))), obs(5, Some(ino(&other)))]),
    };
    s.retain_batch(&mut b, t0 + MIN_WALK_GAP, false);
    assert_eq!(cookies(&b), [1, 4]);
    assert_eq!((s.status.flows_outside, s.status.without_cgroup, s.status.walks), (3, 1, 2));

    // The outside id again: no walk. A container created since: one walk finds it.
    let later = scope.join("ecs/task3/c3");
    std::fs::create_dir_all(&later).expect("mkdir");
    let mut b = Batch { closed: vec![obs(6, Some(ino(&other)))], live: None };
    s.retain_batch(&mut b, t0 + MIN_WALK_GAP * 3, false);
    assert_eq!((cookies(&b).len(), s.status.walks), (0, 2));
    let mut b = Batch { closed: vec![obs(7, Some(ino(&later)))], live: None };
    s.retain_batch(&mut b, t0 + MIN_WALK_GAP * 5, false);
    assert_eq!((cookies(&b), s.status.walks, s.status.cgroups_inside), (vec![7], 3, 6));

    let shared = ScopeShared::new(scope.clone());
    s.publish(&shared);
    assert_eq!(shared.status().flows_outside, 4);
}

#[test]
fn ids_met_between_walks_wait_for_the_next_walk_and_are_never_let_through() {
    let tmp = Tmp::new("between");
    let scope = tmp.path().join("s");
    let task = scope.join("c");
    std::fs::create_dir_all(&scope).expect("mkdir");
    let outside = tmp.path().join("o");
    std::fs::create_dir_all(&outside).expect("mkdir");
    let t0 = Instant::now();
    let mut s = CgroupScope::new(scope);
    s.last_walk = Some(t0);
    // A container created since the walk, and another instance's socket: neither is guessed.
    std::fs::create_dir_all(&task).expect("mkdir");
    let mut b = Batch {
        closed: vec![obs(1, Some(ino(&outside))), obs(2, Some(ino(&task)))],
        live: Some(vec![obs(3, Some(ino(&outside))), obs(4, Some(ino(&task)))]),
    };
    s.retain_batch(&mut b, t0 + Duration::from_millis(1), false);
    assert_eq!((cookies(&b).len(), s.status.walks, s.status.waiting), (0, 1, 2), "no walk allowed yet: wait");
    assert_eq!(s.status.flows_outside, 0);
    // The next poll after the gap walks: the waiting closed flows come out first, in order.
    let mut b = Batch { closed: vec![obs(5, Some(ino(&task)))], live: None };
    s.retain_batch(&mut b, t0 + MIN_WALK_GAP, false);
    assert_eq!((cookies(&b), s.status.walks, s.status.waiting), (vec![2, 5], 2, 0));
    assert_eq!(s.status.flows_outside, 1);
    // DNS packets wait the same way; the last poll (`flush`) walks at once.
    let late = tmp.path().join("s/d");
    std::fs::create_dir_all(&late).expect("mkdir");
    let mut packets = vec![dns(Some(ino(&late)))];
    s.retain_dns(&mut packets, t0 + MIN_WALK_GAP + Duration::from_millis(1), false);
    assert_eq!((packets.len(), s.status.waiting), (0, 1));
    let mut packets = Vec::new();
    s.retain_dns(&mut packets, t0 + MIN_WALK_GAP + Duration::from_millis(2), true);
    assert_eq!((packets.len(), s.status.waiting, s.status.walks), (1, 0, 3));
}

#[test]
fn a_full_wait_walks_at_once() {
    let tmp = Tmp::new("full");
    let scope = tmp.path().join("s");
    std::fs::create_dir_all(&scope).expect("mkdir");
    let t0 = Instant::now();
    let mut s = CgroupScope::new(scope.clone());
    s.last_walk = Some(t0);
    let c = scope.join("c");
    std::fs::create_dir_all(&c).expect("mkdir");
    let closed = (0..MAX_WAITING as u64).map(|i| obs(i, Some(ino(&c)))).collect();
    let mut b = Batch { closed, live: None };
    s.retain_batch(&mut b, t0 + Duration::from_millis(1), false);
    assert_eq!((b.closed.len(), s.status.walks, s.status.waiting), (MAX_WAITING, 2, 0));
}

#[test]
fn a_missing_directory_counts_nothing_until_it_appears() {
    let tmp = Tmp::new("missing");
    let scope = tmp.path().join("later");
    let mut s = CgroupScope::new(scope.clone());
    let t0 = Instant::now();
    assert!(!s.status.exists);
    let elsewhere = tmp.path().to_path_buf();
    let mut packets = vec![dns(Some(ino(&elsewhere))), dns(None)];
    s.retain_dns(&mut packets, t0 + MIN_WALK_GAP, false);
    assert_eq!((packets.len(), s.status.dns_outside), (0, 2));
    let c = scope.join("c");
    std::fs::create_dir_all(&c).expect("mkdir");
    let mut packets = vec![dns(Some(ino(&c)))];
    s.retain_dns(&mut packets, t0 + MIN_WALK_GAP * 2, false);
    assert_eq!((packets.len(), s.status.exists, s.status.cgroups_inside), (1, true, 2));
}

fn dns(cgroup_id: Option<u64>) -> DnsPacket {
    let a = std::net::SocketAddr::from(([127, 0, 0, 1], 53));
    DnsPacket {
        local: a,
        remote: a,
        tcp: false,
        outgoing: true,
        ts_ns: 0,
        cgroup_id,
        pid: None,
        netns: None,
        comm: None,
        wire_len: 0,
        payload: Vec::new(),
    }
}
