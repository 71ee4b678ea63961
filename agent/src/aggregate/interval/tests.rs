use std::net::IpAddr;
use std::sync::Arc;

use super::*;
use crate::flow::{EcsLabels, Endpoint};

fn record(remote: &str, port: u16, ecs: Option<Arc<EcsLabels>>) -> FlowRecord {
    let mut f = FlowRecord::test(Protocol::Tcp, 1, true);
    f.local = Endpoint::new("10.0.0.1".parse::<IpAddr>().expect("ip"), 40_000);
    f.remote = Endpoint::new(remote.parse::<IpAddr>().expect("ip"), port);
    f.remote.ecs = ecs;
    f
}

fn web() -> EcsLabels {
    EcsLabels {
        cluster: Some("prod".into()),
        service: Some("web".into()),
        task_family: Some("web".into()),
        task_revision: Some("3".into()),
        container_name: Some("app".into()),
        ..Default::default()
    }
}

fn values(bytes: u64) -> SeriesValues {
    SeriesValues { bytes_sent: bytes, ..Default::default() }
}

#[test]
fn equal_identities_make_equal_keys() {
    let g = LabelGroups::default();
    let labels = Arc::new(web());
    let (a, b) = (record("10.0.0.2", 443, Some(labels.clone())), record("10.0.0.3", 443, Some(labels)));
    // A named remote end: its address is not in the key, so not in the identity either.
    assert_eq!(Identity::of(&a, g), Identity::of(&b, g));
    assert_eq!(SeriesKey::with(&a, g, None), SeriesKey::with(&b, g, None));
    // An unnamed one: the address is the name.
    let (c, d) = (record("10.0.0.2", 443, None), record("10.0.0.3", 443, None));
    assert_ne!(Identity::of(&c, g), Identity::of(&d, g));
    assert_ne!(SeriesKey::with(&c, g, None), SeriesKey::with(&d, g, None));
    // The server port is in both; the client's ephemeral port in neither.
    assert_ne!(Identity::of(&c, g), Identity::of(&record("10.0.0.2", 80, None), g));
    let mut e = c.clone();
    e.local.port = 40_001;
    assert_eq!(Identity::of(&c, g), Identity::of(&e, g));
}

#[test]
fn equal_labels_in_other_allocations_are_other_identities() {
    // Compared by pointer: not found again, so the key is built (same key, same slot).
    let g = LabelGroups::default();
    let (a, b) =
        (record("10.0.0.2", 443, Some(Arc::new(web()))), record("10.0.0.2", 443, Some(Arc::new(web()))));
    assert_ne!(Identity::of(&a, g), Identity::of(&b, g));
    let mut m = IntervalMap::new(10);
    for r in [&a, &b] {
        let id = Identity::of(r, g);
        if !m.add_by_id(&id, &values(5)) {
            m.add(SeriesKey::with(r, g, None), Some(id), &values(5));
        }
    }
    assert_eq!((m.len(), m.ids()), (1, 2));
    let deltas = m.take();
    assert_eq!(deltas.len(), 1);
    assert_eq!(deltas[0].1.bytes_sent, 10);
}

#[test]
fn records_of_a_known_identity_add_to_its_slot() {
    let g = LabelGroups::default();
    let r = record("10.0.0.2", 443, None);
    let mut m = IntervalMap::new(10);
    let id = Identity::of(&r, g);
    assert!(!m.add_by_id(&id, &values(1)), "unknown at first");
    m.add(SeriesKey::with(&r, g, None), Some(id.clone()), &values(1));
    for _ in 0..9 {
        assert!(m.add_by_id(&id, &values(1)));
    }
    let deltas = m.take();
    assert_eq!(deltas, vec![(SeriesKey::with(&r, g, None), values(10))]);
    assert_eq!((m.len(), m.ids()), (0, 0), "empty after take");
    assert!(!m.add_by_id(&id, &values(1)), "identities are per interval");
}

#[test]
fn identities_are_bounded_and_the_rest_still_count() {
    let g = LabelGroups::default();
    let mut m = IntervalMap::new(3);
    for round in 0..2 {
        for i in 0..10 {
            let r = record(&format!("10.0.1.{i}"), 443, None);
            let id = Identity::of(&r, g);
            if !m.add_by_id(&id, &values(1)) {
                m.add(SeriesKey::with(&r, g, None), Some(id), &values(1));
            }
        }
        assert_eq!((m.len(), m.ids()), (10, 3), "round {round}");
    }
    let deltas = m.take();
    assert_eq!(deltas.len(), 10);
    assert!(deltas.iter().all(|(_, v)| v.bytes_sent == 2), "{deltas:?}");
}

#[test]
fn forgetting_identities_keeps_the_slots() {
    let g = LabelGroups::default();
    let r = record("10.0.0.2", 443, None);
    let mut m = IntervalMap::new(10);
    let id = Identity::of(&r, g);
    m.add(SeriesKey::with(&r, g, None), Some(id.clone()), &values(4));
    m.forget_ids();
    assert!(!m.add_by_id(&id, &values(1)));
    m.add(SeriesKey::with(&r, g, None), Some(id), &values(1));
    assert_eq!(m.take(), vec![(SeriesKey::with(&r, g, None), values(5))]);
}
