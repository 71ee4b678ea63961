use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol as P, Tuple,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};

use super::*;
use crate::flow::Endpoint;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// DNAT: a client reaches 10.0.0.1:8080, which goes to the container at 172.17.0.2:80.
fn dnat() -> Entry {
    Entry {
        protocol: 6,
        orig_src: sa("10.0.0.2:40000"),
        orig_dst: sa("10.0.0.1:8080"),
        reply_src: sa("172.17.0.2:80"),
        reply_dst: sa("10.0.0.2:40000"),
    }
}

/// MASQUERADE: the container 172.17.0.2:50000 reaches 10.0.0.2:9000 as 10.0.0.1:61000.
fn masq() -> Entry {
    Entry {
        protocol: 6,
        orig_src: sa("172.17.0.2:50000"),
        orig_dst: sa("10.0.0.2:9000"),
        reply_src: sa("10.0.0.2:9000"),
        reply_dst: sa("10.0.0.1:61000"),
    }
}

fn flow(local: &str, remote: &str) -> FlowRecord {
    let mut r = FlowRecord::probe(sa(local), sa(remote), true);
    r.local = Endpoint::new(sa(local).ip(), sa(local).port());
    r
}

#[test]
fn both_ends_of_a_nat_get_the_real_remote() {
    let ct = Arc::new(Conntrack::new(16));
    ct.apply(&Event::New(dnat()));
    ct.apply(&Event::New(masq()));
    let plain = Entry { reply_src: sa("10.0.0.9:1"), reply_dst: sa("10.0.0.8:2"), ..dnat() };
    ct.apply(&Event::New(Entry { orig_src: sa("10.0.0.8:2"), orig_dst: sa("10.0.0.9:1"), ..plain }));
    let e = ConntrackEnricher(ct.clone());
    // The client of the host port: its remote is the container behind it.
    let mut client = flow("10.0.0.2:40000", "10.0.0.1:8080");
    e.enrich(&mut client);
    assert_eq!(client.translation.map(|t| t.socket_addr()), Some(sa("172.17.0.2:80")));
    // The server reached by the masqueraded container: its remote is the container.
    let mut server = flow("10.0.0.2:9000", "10.0.0.1:61000");
    e.enrich(&mut server);
    assert_eq!(server.translation.map(|t| t.socket_addr()), Some(sa("172.17.0.2:50000")));
    // The container's own sockets saw the real peers: nothing to translate.
    for (l, r) in [("172.17.0.2:80", "10.0.0.2:40000"), ("172.17.0.2:50000", "10.0.0.2:9000")] {
        let mut f = flow(l, r);
        e.enrich(&mut f);
        assert_eq!(f.translation, None, "{l} -> {r}");
    }
    // Un-NAT'd entries are not kept.
    assert_eq!(ct.status().entries, 2);
    assert_eq!(ct.status().translated_flows, 2);
    ct.apply(&Event::Destroy(dnat()));
    assert_eq!(ct.lookup(Protocol::Tcp, sa("10.0.0.2:40000"), sa("10.0.0.1:8080")), None);
    assert_eq!(ct.status().entries, 1);
}

#[test]
fn the_map_is_bounded_and_drops_are_counted() {
    let ct = Conntrack::new(3);
    for i in 0..10u16 {
        let e = Entry { orig_src: SocketAddr::new(sa("10.0.0.2:1").ip(), 1000 + i), ..dnat() };
        ct.apply(&Event::New(Entry { reply_dst: e.orig_src, ..e }));
    }
    let s = ct.status();
    assert_eq!((s.entries, s.dropped_full, s.events), (3, 7, 10));
    ct.replace(&[dnat()]);
    assert_eq!((ct.status().entries, ct.status().dumps), (1, 1));
}

#[test]
fn a_re_dump_never_hides_translations_from_lookups() {
    let ct = std::sync::Arc::new(Conntrack::new(65_536));
    let entries: Vec<Entry> = (0..2_000u16)
        .map(|i| Entry { orig_src: SocketAddr::new(sa("10.0.0.2:1").ip(), 1000 + i), ..dnat() })
        .map(|e| Entry { reply_dst: e.orig_src, ..e })
        .collect();
    ct.replace(&entries);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (ct, stop) = (ct.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut lookups, mut missing) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                lookups += 1;
                missing +=
                    u64::from(ct.lookup(Protocol::Tcp, sa("10.0.0.2:2999"), sa("10.0.0.1:8080")).is_none());
            }
            (lookups, missing)
        })
    };
    // Re-dumps after overruns: the same connections, found by every lookup meanwhile.
    for _ in 0..200 {
        ct.replace(&entries);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (lookups, missing) = reader.join().expect("reader");
    assert_eq!(missing, 0, "{missing} of {lookups} lookups found no translation during re-dumps");
    let s = ct.status();
    assert_eq!((s.entries, s.dumps, s.events), (2_000, 201, 0));
}

fn encode(msg: ConntrackMessage) -> Vec<u8> {
    let nf = NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0), msg);
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(nf));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

fn tuple(src: &str, dst: &str) -> Vec<Tuple> {
    vec![
        Tuple::Ip(vec![IPTuple::SourceAddress(sa(src).ip()), IPTuple::DestinationAddress(sa(dst).ip())]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(P::Tcp),
            ProtoTuple::SourcePort(sa(src).port()),
            ProtoTuple::DestinationPort(sa(dst).port()),
        ]),
    ]
}

#[test]
fn decodes_events_and_counts_garbage() {
    let e = dnat();
    let attrs = vec![
        ConntrackAttribute::CtaTupleOrig(tuple("10.0.0.2:40000", "10.0.0.1:8080")),
        ConntrackAttribute::CtaTupleReply(tuple("172.17.0.2:80", "10.0.0.2:40000")),
    ];
    let mut rx = encode(ConntrackMessage::New(attrs.clone()));
    rx.extend(encode(ConntrackMessage::Delete(attrs)));
    let mut got = Vec::new();
    let mut bad = 0;
    netlink::read_events(&rx, &mut |ev| got.push(ev), &mut bad);
    assert_eq!((got, bad), (vec![Event::New(e), Event::Destroy(e)], 0));

    // No reply tuple, a truncated message, garbage: counted, never a panic.
    let half = encode(ConntrackMessage::New(vec![ConntrackAttribute::CtaTupleOrig(tuple(
        "10.0.0.2:1",
        "10.0.0.1:2",
    ))]));
    // An ICMP entry is not an error, just not kept.
    let icmp = |src: &str, dst: &str| {
        vec![
            Tuple::Ip(vec![IPTuple::SourceAddress(sa(src).ip()), IPTuple::DestinationAddress(sa(dst).ip())]),
            Tuple::Proto(vec![ProtoTuple::Protocol(P::Icmp)]),
        ]
    };
    let ping = encode(ConntrackMessage::New(vec![
        ConntrackAttribute::CtaTupleOrig(icmp("10.0.0.2:0", "10.0.0.1:0")),
        ConntrackAttribute::CtaTupleReply(icmp("10.0.0.1:0", "10.0.0.2:0")),
    ]));
    let before = bad;
    netlink::read_events(&ping, &mut |_| panic!("an ICMP entry is not a flow"), &mut bad);
    assert_eq!(bad, before);
    let mut cut = encode(ConntrackMessage::New(vec![]));
    cut.truncate(cut.len() - 2);
    for junk in [half, cut, vec![0xff; 40], vec![]] {
        let mut n = 0;
        netlink::read_events(&junk, &mut |_| n += 1, &mut bad);
        assert_eq!(n, 0);
    }
    assert!(bad >= 3, "{bad}");
}
