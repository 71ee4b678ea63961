//! Labels each poll's flows with ECS identity: local ends from the local provider, remote
//! ends from the peer flow on this host ([`Peers`]) or the ECS API provider.
//!
//! The two ends of a short intra-host connection close a few milliseconds apart, and the
//! first to close arrives before its peer was ever seen, or seen only before its process
//! was known (on a cgroup v1 host such a socket says only "host"). So a closed flow whose
//! remote end names no container yet is held back for up to [`HOLD`] (bounded by
//! [`MAX_HELD`]), until its peer shows up with better labels; then it goes on, labelled or
//! not. Nothing is dropped: with
//! [`MAX_HELD`] flows waiting, new ones go on at once (counted in [`LabelCounts`]).
//!
//! Labels are shared, not copied: after enrichment every label set is replaced by the one
//! shared copy of its value ([`Interner`]), so the flow table holds one copy per container,
//! not one per flow.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::collector::{Batch, Observed};
use crate::ecs::peers::Peers;
use crate::enrich::Enricher;
use crate::flow::FlowRecord;
use crate::flow::labels::Interner;
pub use crate::state::LabelCounts;

/// Longest a closed flow waits for its peer.
pub const HOLD: Duration = Duration::from_millis(250);
/// Closed flows waiting at most; beyond it they go on at once.
pub const MAX_HELD: usize = 65_536;

/// Flows whose local labels are kept to label the remote end of intra-host peers, per
/// generation (see [`Peers`]).
const PEER_LABELS: usize = 200_000;

/// Shortest life of a generation of peer labels: closed flows' labels stay at least this long.
const PEER_TTL_MIN: Duration = Duration::from_secs(5);

/// The remote end names a container (nothing better can come for it).
fn names_container(l: &Option<std::sync::Arc<crate::flow::EcsLabels>>) -> bool {
    crate::flow::EcsLabels::rank(l.as_deref()) >= 3
}

pub struct Labeller {
    peers: Peers,
    interner: Interner,
    held: VecDeque<(Instant, Observed)>,
    max_held: usize,
    not_held: u64,
}

impl Labeller {
    /// For a loop that scans open flows every `poll_interval` (their peer labels must last
    /// from one scan to the next).
    pub fn new(poll_interval: Duration) -> Self {
        Labeller::with_bounds(MAX_HELD, PEER_LABELS, (2 * poll_interval).max(PEER_TTL_MIN))
    }

    fn with_bounds(max_held: usize, peer_labels: usize, peer_ttl: Duration) -> Self {
        Labeller {
            peers: Peers::new(peer_labels, peer_ttl),
            interner: Interner::default(),
            held: VecDeque::new(),
            max_held,
            not_held: 0,
        }
    }

    /// Labels `batch` in place: `local` (with intra-host peers) first, then each of
    /// `remote` in order. With `flush`, releases every held flow.
    pub fn label(
        &mut self,
        local: Option<&dyn Enricher>,
        remote: &[&dyn Enricher],
        batch: &mut Batch,
        now: Instant,
        flush: bool,
    ) {
        if let Some(local) = local {
            for o in batch.closed.iter_mut().chain(batch.live.iter_mut().flatten()) {
                local.enrich(&mut o.record);
            }
        }
        // Closed flows wait for their peer only when there are local labels to link.
        let flush = flush || local.is_none();
        {
            let mut records: Vec<&mut FlowRecord> = self
                .held
                .iter_mut()
                .map(|(_, o)| o)
                .chain(batch.closed.iter_mut())
                .chain(batch.live.iter_mut().flatten())
                .map(|o| &mut o.record)
                .collect();
            if local.is_some() {
                self.peers.link(&mut records, now);
            }
            for e in remote {
                for r in records.iter_mut() {
                    e.enrich(r);
                }
            }
            for r in records.iter_mut() {
                self.interner.intern(&mut r.local.ecs);
                self.interner.intern(&mut r.remote.ecs);
            }
        }
        if batch.live.is_some() {
            self.interner.prune();
        }
        let mut out = Vec::with_capacity(batch.closed.len());
        for o in batch.closed.drain(..) {
            if flush || names_container(&o.record.remote.ecs) {
                out.push(o);
            } else if self.held.len() >= self.max_held {
                self.not_held += 1;
                out.push(o);
            } else {
                self.held.push_back((now, o));
            }
        }
        let mut keep = VecDeque::with_capacity(self.held.len());
        for (since, o) in self.held.drain(..) {
            if flush || names_container(&o.record.remote.ecs) || now.duration_since(since) >= HOLD {
                out.push(o);
            } else {
                keep.push_back((since, o));
            }
        }
        self.held = keep;
        batch.closed = out;
    }

    /// Closed flows waiting for their peer.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    pub fn counts(&self) -> LabelCounts {
        LabelCounts {
            held: self.held.len() as u64,
            not_held_full: self.not_held,
            peer_labels_evicted: self.peers.evicted(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::FixedLabels;
    use crate::flow::EcsLabels;
    use crate::flow::{Endpoint, Protocol};

    fn closed(local: u16, remote: u16) -> Observed {
        let mut r = FlowRecord::test(Protocol::Tcp, u64::from(local), true);
        r.local = Endpoint::new("10.0.0.1".parse().expect("ip"), local);
        r.remote = Endpoint::new("10.0.0.1".parse().expect("ip"), remote);
        Observed { record: r, last_ns: 1 }
    }

    fn web() -> EcsLabels {
        EcsLabels { task_family: Some("web".into()), container_id: Some("c1".into()), ..Default::default() }
    }

    /// Local labels by local port: "host" (no process known yet) or `web`.
    #[derive(Debug)]
    struct ByPort(u16);
    impl Enricher for ByPort {
        fn enrich(&self, r: &mut FlowRecord) {
            let l = if r.local.port == self.0 { EcsLabels::host(None) } else { web() };
            r.local.ecs = Some(std::sync::Arc::new(l));
        }

        fn health(&self) -> crate::enrich::ProviderHealth {
            FixedLabels(web()).health()
        }
    }

    #[test]
    fn a_flow_whose_peer_says_only_host_waits_for_better_labels() {
        let mut l = Labeller::new(Duration::from_secs(1));
        let t0 = Instant::now();
        // The client is first seen before its process is known; the server closes first.
        let mut scan = Batch { closed: vec![], live: Some(vec![closed(40000, 80)]) };
        l.label(Some(&ByPort(40000)), &[], &mut scan, t0, false);
        let mut server = Batch { closed: vec![closed(80, 40000)], live: Some(vec![]) };
        l.label(Some(&ByPort(40000)), &[], &mut server, t0, false);
        assert!(server.closed.is_empty(), "held: its peer says only host");
        let mut client = Batch { closed: vec![closed(40000, 80)], live: None };
        l.label(Some(&ByPort(0)), &[], &mut client, t0 + Duration::from_millis(5), false);
        let remote: Vec<_> = client
            .closed
            .iter()
            .map(|o| o.record.remote.ecs.as_ref().and_then(|e| e.container_id.clone()))
            .collect();
        assert_eq!(remote, [Some("c1".to_string()), Some("c1".to_string())], "both ends name the container");
    }

    #[test]
    fn the_first_end_to_close_waits_for_its_peer_then_both_are_labelled() {
        let local = FixedLabels(web());
        let mut l = Labeller::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let mut first = Batch { closed: vec![closed(80, 40000)], live: None };
        l.label(Some(&local), &[], &mut first, t0, false);
        assert!(first.closed.is_empty(), "held: its peer is not known yet");
        assert_eq!(l.held(), 1);
        let mut second = Batch { closed: vec![closed(40000, 80)], live: None };
        l.label(Some(&local), &[], &mut second, t0 + Duration::from_millis(20), false);
        assert_eq!(second.closed.len(), 2, "both released, labelled");
        assert!(second.closed.iter().all(|o| o.record.remote.ecs.is_some()));

        // A flow whose peer never shows up goes on after HOLD, unlabelled; flush releases at once.
        let mut lone = Batch { closed: vec![closed(81, 40001)], live: None };
        l.label(Some(&local), &[], &mut lone, t0, false);
        let mut later = Batch::default();
        l.label(Some(&local), &[], &mut later, t0 + HOLD, false);
        assert_eq!(later.closed.len(), 1);
        assert!(later.closed[0].record.remote.ecs.is_none());
        let mut held = Batch { closed: vec![closed(82, 40002)], live: None };
        l.label(Some(&local), &[], &mut held, t0, true);
        assert_eq!((held.closed.len(), l.held()), (1, 0));
    }

    #[test]
    fn bounds_are_kept_and_counted() {
        let local = FixedLabels(web());
        let flows = || (0..5).map(|i| closed(100 + i, 50000 + i)).collect::<Vec<_>>();
        let t0 = Instant::now();
        // At most 2 held: the other 3 go on at once.
        let ttl = Duration::from_secs(60);
        let mut l = Labeller::with_bounds(2, 1000, ttl);
        let mut b = Batch { closed: flows(), live: None };
        l.label(Some(&local), &[], &mut b, t0, false);
        assert_eq!(b.closed.len(), 3);
        assert_eq!(l.counts(), LabelCounts { held: 2, not_held_full: 3, peer_labels_evicted: 0 });
        // Two generations of 2 labels: of 5 flows, the first 2 are forgotten; then their peers come.
        let mut l = Labeller::with_bounds(MAX_HELD, 2, ttl);
        let mut b = Batch { closed: flows(), live: None };
        l.label(Some(&local), &[], &mut b, t0, true);
        assert_eq!(l.counts().peer_labels_evicted, 2);
        let mut peers = Batch { closed: vec![closed(50000, 100), closed(50004, 104)], live: None };
        l.label(Some(&local), &[], &mut peers, t0, true);
        let labelled: Vec<bool> = peers.closed.iter().map(|o| o.record.remote.ecs.is_some()).collect();
        assert_eq!(labelled, [false, true], "100's label was forgotten, 104's was not");
        assert_eq!(l.counts().peer_labels_evicted, 4);
    }
}
