use super::*;
use crate::clock::FakeClock;
use crate::flow::Family;

const LISTENER: u64 = 1;
const SERVER: u64 = 2;
const CLIENT: u64 = 3;
const NS: Option<u32> = Some(4026532000);

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn info(sent: u64, received: u64) -> TcpCounters {
    TcpCounters {
        bytes_sent: sent,
        bytes_received: received,
        segs_out: 10,
        segs_in: 9,
        total_retrans: 0,
        rtt_us: 50,
        rttvar_us: 25,
        ..Default::default()
    }
}

fn sample(cookie: u64, state: u8, local: &str, remote: &str, i: Option<TcpCounters>) -> Sample {
    Sample { cookie, state, local: addr(local), remote: addr(remote), info: i, cgroup_id: None }
}

fn listener() -> Sample {
    sample(LISTENER, TCP_LISTEN, "0.0.0.0:8080", "0.0.0.0:0", Some(info(0, 0)))
}

fn pair(state: u8, up: u64, down: u64, server_rx: u64, client_rx: u64) -> Vec<Sample> {
    vec![
        listener(),
        sample(SERVER, state, "127.0.0.1:8080", "127.0.0.1:40000", Some(info(down, server_rx))),
        sample(CLIENT, state, "127.0.0.1:40000", "127.0.0.1:8080", Some(info(up, client_rx))),
    ]
}

fn by_cookie(v: &[Observed], cookie: u64) -> FlowRecord {
    v.iter().find(|o| o.record.cookie == cookie).map(|o| o.record.clone()).expect("record for cookie")
}

#[test]
fn open_connections_become_live_records_with_directions_and_no_listeners() {
    let clock = FakeClock::at(1_000_000_000);
    let mut t = Tracker::new(16);
    let r =
        t.scan(Some(7), &pair(TCP_ESTABLISHED, 100_000, 7_000, 100_000, 7_000), true, 1_000_000_000, &clock);
    assert_eq!(r.live.len(), 2, "the listener is not a flow");
    assert!(r.closed.is_empty());
    let server = by_cookie(&r.live, SERVER);
    let client = by_cookie(&r.live, CLIENT);
    assert_eq!(server.direction, Direction::Incoming);
    assert_eq!(client.direction, Direction::Outgoing);
    assert_eq!((client.bytes_sent, client.bytes_received), (100_000, 7_000));
    assert_eq!((server.bytes_sent, server.bytes_received), (7_000, 100_000));
    assert_eq!((client.packets_sent, client.packets_received, client.rtt_us), (10, 9, Some(50)));
    assert_eq!(client.netns, Some(7));
    assert_eq!(client.opened_at, None, "sockets of the first dump predate the agent");
    assert_eq!(client.closed_at, None);
}

#[test]
fn fin_is_not_payload() {
    let i = info(5, 8);
    assert_eq!(payload_bytes(TCP_ESTABLISHED, &i, None), (5, 8));
    assert_eq!(payload_bytes(TCP_FIN_WAIT2, &i, None), (5, 8), "our FIN is not in bytes_sent");
    assert_eq!(payload_bytes(TCP_CLOSE_WAIT, &i, Some(7)), (5, 7), "their FIN counts one byte");
    assert_eq!(payload_bytes(TCP_LAST_ACK, &i, None), (5, 7));
    assert_eq!(payload_bytes(TCP_CLOSE, &i, Some(7)), (5, 7), "FIN arrived after the last open sample");
    assert_eq!(payload_bytes(TCP_CLOSE, &i, Some(8)), (5, 8), "reset: nothing arrived since");
    let retrans = TcpCounters { bytes_sent: 1_500, bytes_retrans: 500, ..Default::default() };
    assert_eq!(payload_bytes(TCP_ESTABLISHED, &retrans, None).0, 1_000, "retransmitted bytes once");
}

#[test]
fn vanished_sockets_close_with_their_last_counters() {
    let clock = FakeClock::at(1_000_000_000);
    let mut t = Tracker::new(16);
    t.scan(NS, &pair(TCP_ESTABLISHED, 10, 20, 10, 20), true, 1_000_000_000, &clock);
    let r = t.scan(NS, &pair(TCP_ESTABLISHED, 100, 200, 100, 200), true, 2_000_000_000, &clock);
    assert_eq!(by_cookie(&r.live, CLIENT).bytes_sent, 100);
    // Both closed and released between two dumps (the server socket lingers in TIME_WAIT, no tcp_info).
    let tw = sample(SERVER, TCP_TIME_WAIT, "127.0.0.1:8080", "127.0.0.1:40000", None);
    let r = t.scan(NS, &[listener(), tw], true, 3_000_000_000, &clock);
    assert!(r.live.is_empty());
    assert_eq!(r.closed.len(), 2);
    let client = by_cookie(&r.closed, CLIENT);
    assert_eq!((client.bytes_sent, client.bytes_received), (100, 200));
    assert!(client.closed_at.is_some());
    assert!(t.is_empty());
    let r = t.scan(NS, &[listener()], true, 4_000_000_000, &clock);
    assert!(r.closed.is_empty(), "reported once");
}

#[test]
fn held_closed_sockets_are_reported_once_without_the_fin() {
    let clock = FakeClock::at(0);
    let mut t = Tracker::new(16);
    t.scan(NS, &pair(TCP_ESTABLISHED, 100, 7, 100, 7), true, 1, &clock);
    let r = t.scan(NS, &pair(TCP_CLOSE, 100, 7, 101, 8), true, 2, &clock);
    assert!(r.live.is_empty());
    let client = by_cookie(&r.closed, CLIENT);
    assert_eq!((client.bytes_sent, client.bytes_received), (100, 7));
    assert_eq!(by_cookie(&r.closed, SERVER).bytes_received, 100);
    let r = t.scan(NS, &pair(TCP_CLOSE, 100, 7, 101, 8), true, 3, &clock);
    assert!(r.closed.is_empty() && r.live.is_empty(), "still held: nothing new");
    let r = t.scan(NS, &[listener()], true, 4, &clock);
    assert!(r.closed.is_empty(), "released: already reported");
    assert!(t.is_empty());
}

#[test]
fn new_sockets_after_the_first_dump_get_an_open_time_and_unconnected_ones_are_ignored() {
    let clock = FakeClock::at(0);
    let mut t = Tracker::new(16);
    t.scan(NS, &[listener()], true, 1, &clock);
    let fresh = sample(9, TCP_CLOSE, "0.0.0.0:0", "0.0.0.0:0", Some(info(0, 0)));
    let r =
        t.scan(NS, &[pair(TCP_ESTABLISHED, 1, 1, 1, 1), vec![fresh]].concat(), true, 2_000_000_000, &clock);
    assert_eq!(r.live.len(), 2);
    assert!(r.live.iter().all(|o| o.record.opened_at.is_some()));
}

#[test]
fn capacity_bounds_tracking_and_counts_the_rest() {
    let clock = FakeClock::at(0);
    let mut t = Tracker::new(1);
    let r = t.scan(NS, &pair(TCP_ESTABLISHED, 1, 1, 1, 1), true, 1, &clock);
    assert_eq!((r.live.len(), r.over_capacity), (1, 1));
    assert_eq!(t.len(), 1);
}

#[test]
fn dual_stack_sockets_report_ipv4_and_counters_never_shrink() {
    let clock = FakeClock::at(0);
    let mut t = Tracker::new(4);
    let l6 = sample(1, TCP_LISTEN, "[::]:80", "[::]:0", Some(info(0, 0)));
    let s = sample(2, TCP_ESTABLISHED, "[::ffff:10.0.0.1]:80", "[::ffff:10.0.0.2]:5000", Some(info(9, 9)));
    let r = t.scan(NS, &[l6, s], true, 1, &clock);
    let rec = by_cookie(&r.live, 2);
    assert_eq!(rec.local.addr, "10.0.0.1".parse::<IpAddr>().expect("ip"));
    assert_eq!((rec.family, rec.direction), (Family::Ipv4, Direction::Incoming));
    let zeroed =
        sample(2, TCP_ESTABLISHED, "[::ffff:10.0.0.1]:80", "[::ffff:10.0.0.2]:5000", Some(info(0, 0)));
    let r = t.scan(NS, &[l6, zeroed], true, 2, &clock);
    assert_eq!(by_cookie(&r.live, 2).bytes_sent, 9);
    assert_eq!(r.live[0].last_ns, 1, "unchanged counters keep the last change time");
}

#[test]
fn incomplete_dumps_close_nothing() {
    let clock = FakeClock::at(0);
    let mut t = Tracker::new(16);
    t.scan(NS, &pair(TCP_ESTABLISHED, 1, 1, 1, 1), true, 1, &clock);
    let r = t.scan(NS, &[listener()], false, 2, &clock);
    assert!(r.closed.is_empty() && r.live.is_empty());
    assert_eq!(t.len(), 2, "still tracked");
    let r = t.scan(NS, &pair(TCP_ESTABLISHED, 5, 1, 1, 5), true, 3, &clock);
    assert_eq!((r.live.len(), by_cookie(&r.live, CLIENT).bytes_sent), (2, 5));
}

const OTHER: Option<u32> = Some(4026532111);

#[test]
fn namespaces_are_tracked_apart_same_cookie_own_listeners_own_closes() {
    let clock = FakeClock::at(0);
    let mut t = Tracker::new(16);
    t.scan(NS, &pair(TCP_ESTABLISHED, 10, 20, 10, 20), true, 1, &clock);
    // The same cookies and ports in another namespace (kernels before 5.12 count cookies per
    // namespace), without a listener there: another pair of flows, both outgoing.
    let other = vec![
        sample(SERVER, TCP_ESTABLISHED, "127.0.0.1:8080", "127.0.0.1:40000", Some(info(5, 6))),
        sample(CLIENT, TCP_ESTABLISHED, "127.0.0.1:40000", "127.0.0.1:8080", Some(info(6, 5))),
    ];
    let r = t.scan(OTHER, &other, true, 2, &clock);
    assert_eq!(t.len(), 4);
    assert!(t.has_flows(OTHER, false) && !t.has_flows(OTHER, true) && !t.has_flows(Some(1), false));
    let s = by_cookie(&r.live, SERVER);
    assert_eq!((s.netns, s.direction, s.bytes_sent), (OTHER, Direction::Outgoing, 5));
    assert_eq!(s.opened_at, None, "the first dump of a namespace predates its discovery");
    // An empty complete dump of NS closes NS's flows only.
    let r = t.scan(NS, &[listener()], true, 3, &clock);
    assert_eq!(r.closed.len(), 2);
    assert!(r.closed.iter().all(|o| o.record.netns == NS && o.record.bytes_sent > 5), "{:?}", r.closed);
    assert_eq!(t.len(), 2);
    let r = t.scan(OTHER, &other, true, 4, &clock);
    assert_eq!((r.live.len(), r.closed.len()), (2, 0));
}

#[test]
fn a_vanished_namespace_closes_its_flows_once_and_frees_capacity() {
    let clock = FakeClock::at(0);
    let mut t = Tracker::new(2);
    t.scan(NS, &pair(TCP_ESTABLISHED, 10, 20, 10, 20), true, 1, &clock);
    let other = [sample(9, TCP_ESTABLISHED, "10.0.0.1:5000", "10.0.0.2:80", Some(info(1, 1)))];
    let r = t.scan(OTHER, &other, true, 2, &clock);
    assert_eq!((r.live.len(), r.over_capacity), (0, 1), "capacity is shared by all namespaces");
    let mut ns = t.namespaces();
    ns.sort();
    assert_eq!(ns, vec![NS, OTHER]);
    let closed = t.forget(NS, 3, &clock);
    assert_eq!(closed.len(), 2);
    let c = closed.iter().find(|o| o.record.cookie == CLIENT).expect("client");
    assert_eq!((c.record.bytes_sent, c.record.bytes_received), (10, 20));
    assert!(c.record.closed_at.is_some());
    assert!(t.forget(NS, 4, &clock).is_empty(), "reported once");
    assert_eq!(t.namespaces(), vec![OTHER]);
    let r = t.scan(OTHER, &other, true, 5, &clock);
    assert_eq!((r.live.len(), r.over_capacity), (1, 0));
    assert!(r.live[0].record.opened_at.is_some(), "seen after the namespace's first dump");
}
