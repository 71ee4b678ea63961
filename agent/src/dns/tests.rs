use super::*;

/// A DNS message: header + one question (+ `extra` bytes, e.g. answers).
pub(crate) fn message(id: u16, response: bool, rcode: u8, name: &str, qtype: u16, extra: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend(id.to_be_bytes());
    m.push(if response { 0x81 } else { 0x01 });
    m.push(if response { 0x80 | rcode } else { 0 });
    m.extend([0, 1, 0, u8::from(!extra.is_empty()), 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        m.push(label.len() as u8);
        m.extend(label.as_bytes());
    }
    m.push(0);
    m.extend(qtype.to_be_bytes());
    m.extend(1u16.to_be_bytes());
    m.extend(extra);
    m
}

fn packet(outgoing: bool, ts_ms: u64, payload: Vec<u8>) -> DnsPacket {
    DnsPacket {
        local: "10.0.0.2:40000".parse().expect("addr"),
        remote: "10.0.0.53:53".parse().expect("addr"),
        tcp: false,
        outgoing,
        ts_ns: ts_ms * 1_000_000,
        cgroup_id: None,
        pid: None,
        netns: None,
        comm: None,
        wire_len: payload.len() as u32,
        payload,
    }
}

fn tracker(max_names: usize) -> DnsTracker {
    DnsTracker::new(DnsSettings { timeout: Duration::from_secs(5), max_names })
}

fn client(_: &DnsPacket) -> String {
    "app".into()
}

#[test]
fn parses_names_types_and_rcodes() {
    let m = parse::parse(&message(7, true, 3, "Missing.Example.TEST", 28, &[])).expect("parse");
    assert_eq!(
        (m.id, m.response, m.rcode, m.name.as_str(), m.qtype),
        (7, true, 3, "missing.example.test", 28)
    );
    assert_eq!(parse::rcode_name(3), "NXDOMAIN");
    assert_eq!(parse::rcode_name(2), "SERVFAIL");
    assert_eq!(parse::rcode_name(14), "RCODE14");
    assert_eq!(parse::qtype_name(28), "AAAA");
    assert_eq!(parse::qtype_name(999), "TYPE999");
    // A response truncated by the 512-byte capture still yields its question.
    let long = message(8, true, 0, "ok.test", 1, &[0xc0, 0x0c, 0, 1, 0, 1, 0, 0]);
    assert_eq!(parse::parse(&long).expect("truncated answer").name, "ok.test");
}

#[test]
fn queries_responses_timeouts_and_latency_per_row() {
    let mut t = tracker(100);
    t.ingest(&packet(true, 1_000, message(1, false, 0, "ok.test", 1, &[])), client);
    t.ingest(&packet(false, 1_050, message(1, true, 0, "ok.test", 1, &[])), client);
    t.ingest(&packet(true, 1_100, message(2, false, 0, "nx.test", 1, &[])), client);
    t.ingest(&packet(false, 1_102, message(2, true, 3, "nx.test", 1, &[])), client);
    t.ingest(&packet(true, 1_200, message(3, false, 0, "lost.test", 28, &[])), client);
    // A response with no query, and the server's own view of a query: neither counts as a query.
    t.ingest(&packet(false, 1_300, message(9, true, 0, "ok.test", 1, &[])), client);
    let mut server_view = packet(false, 1_300, message(4, false, 0, "ok.test", 1, &[]));
    (server_view.local, server_view.remote) = (server_view.remote, server_view.local);
    t.ingest(&server_view, client);
    t.expire(1_200 * 1_000_000 + 4_000_000_000);
    assert_eq!(t.counters().pending, 1, "not yet expired");
    t.expire(1_200 * 1_000_000 + 5_000_000_001);
    let rows = t.rows();
    let row = |name: &str| rows.iter().find(|r| r.name == name).expect(name);
    assert_eq!(row("ok.test").rcodes, BTreeMap::from([("NOERROR".to_string(), 1)]));
    let p50 = row("ok.test").latency_us.p50.expect("p50");
    assert!((47_000..=50_000).contains(&p50), "{p50}");
    assert_eq!(row("ok.test").latency_us.max, Some(50_000));
    assert_eq!(row("nx.test").rcodes, BTreeMap::from([("NXDOMAIN".to_string(), 1)]));
    assert_eq!(
        (row("lost.test").queries, row("lost.test").timeouts, row("lost.test").qtype.as_str()),
        (1, 1, "AAAA")
    );
    assert_eq!(row("ok.test").server, "10.0.0.53");
    assert_eq!(row("ok.test").client, "app");
    let c = t.counters();
    assert_eq!((c.queries, c.responses, c.timeouts, c.unmatched_responses, c.server_side), (3, 2, 1, 1, 1));
}

#[test]
fn names_are_bounded_and_folded_into_other() {
    let mut t = tracker(3);
    for i in 0..5 {
        t.ingest(&packet(true, 1, message(100, false, 0, "hot.test", 1, &[])), client);
        t.ingest(&packet(true, 1, message(i, false, 0, &format!("n{i}.test"), 1, &[])), client);
    }
    let names: Vec<String> = t.rows().into_iter().map(|r| r.name).collect();
    assert!(names.contains(&"hot.test".to_string()) && names.contains(&OTHER.to_string()), "{names:?}");
    assert!(t.counters().names <= 3);
    let total: u64 = t.rows().iter().map(|r| r.queries).sum();
    assert_eq!(total, 10, "folding loses no query");
    assert!(t.counters().names_folded >= 2);
}

#[test]
fn tcp_messages_need_their_length_prefix() {
    let mut t = tracker(10);
    let m = message(5, false, 0, "tcp.test", 1, &[]);
    let mut framed = (m.len() as u16).to_be_bytes().to_vec();
    framed.extend(&m);
    let mut p = packet(true, 1, framed.clone());
    p.tcp = true;
    t.ingest(&p, client);
    // A segment holding only part of a message (it continues in the next one).
    p.wire_len = 10;
    p.payload.truncate(10);
    t.ingest(&p, client);
    assert_eq!((t.counters().queries, t.counters().unparsed), (1, 1));
}

#[test]
fn malformed_messages_are_counted_not_fatal() {
    let mut t = tracker(10);
    let ok = message(1, false, 0, "a.test", 1, &[]);
    let mut loop_self = ok[..12].to_vec();
    loop_self.extend([0xc0, 12, 0, 1, 0, 1]); // pointer to itself
    let mut loop_fwd = ok[..12].to_vec();
    loop_fwd.extend([0xc0, 14, 0xc0, 12, 0, 1, 0, 1]); // forward pointer
    let mut huge = ok.clone();
    huge[4..6].copy_from_slice(&0xffffu16.to_be_bytes()); // 65535 questions
    let mut counts = ok.clone();
    counts[6..12].copy_from_slice(&[0xff; 6]); // huge answer counts: ignored, the question is read
    let mut long_label = ok[..12].to_vec();
    long_label.push(70);
    long_label.extend([b'a'; 70]);
    long_label.extend([0, 0, 1, 0, 1]);
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        ok[..5].to_vec(),
        ok[..ok.len() - 3].to_vec(),
        loop_self,
        loop_fwd,
        huge,
        long_label,
        vec![0xff; 40],
    ];
    let n = cases.len() as u64;
    for c in cases {
        t.ingest(&packet(true, 1, c), client);
    }
    assert_eq!(t.counters().malformed, n);
    t.ingest(&packet(true, 1, counts), client);
    assert_eq!((t.counters().malformed, t.counters().queries), (n, 1));
}

/// A stable-Rust fuzz run of the DNS path (parse + statistics): seeds and deterministic mutations
/// (bit flips, truncation, pointer and count injection). `EDDY_DNS_FUZZ_ITERATIONS` runs it longer.
#[test]
fn fuzz_dns_path() {
    let iterations: u64 =
        std::env::var("EDDY_DNS_FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let seeds = [
        message(1, false, 0, "ok.test", 1, &[]),
        message(2, true, 3, "nx.example.test", 28, &[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1]),
        message(3, true, 2, "", 255, &[]),
    ];
    let mut t = tracker(64);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..iterations {
        let mut m = seeds[(i % 3) as usize].clone();
        for _ in 0..(next() % 4) {
            let r = next();
            let pos = (r >> 8) as usize % m.len().max(1);
            match r % 5 {
                0 if !m.is_empty() => m[pos] ^= 1 << ((r >> 40) % 8),
                1 => m.truncate(pos),
                2 if pos + 1 < m.len() => {
                    m[pos] = 0xc0 | ((r >> 16) as u8 & 0x3f);
                    m[pos + 1] = (r >> 24) as u8;
                }
                3 if m.len() >= 12 => m[4 + (r >> 32) as usize % 8] = (r >> 48) as u8,
                _ => m.extend(std::iter::repeat_n((r >> 56) as u8, (r >> 20) as usize % 64)),
            }
        }
        let mut p = packet(next() % 2 == 0, i, m);
        p.tcp = next() % 7 == 0;
        t.ingest(&p, client);
        if i % 1_000 == 0 {
            t.expire(i * 1_000_000);
        }
    }
    let c = t.counters();
    assert_eq!(c.packets, iterations);
    assert!(c.names <= 64 && c.pending as usize <= MAX_PENDING);
}

/// A query (and, for `answered`, its response 1 ms later) from `client_no` to `server_no`.
fn exchange(t: &mut DnsTracker, id: u16, name: &str, qtype: u16, client_no: u32, server_no: u32, ts_ms: u64) {
    let remote: SocketAddr = (std::net::Ipv4Addr::from(0x0a00_0000 | server_no), 53).into();
    let mut q = packet(true, ts_ms, message(id, false, 0, name, qtype, &[]));
    q.remote = remote;
    t.ingest(&q, |_| format!("client{client_no}"));
    let mut r = packet(false, ts_ms + 1, message(id, true, 0, name, qtype, &[]));
    r.remote = remote;
    t.ingest(&r, client);
}

#[test]
fn rows_stay_within_the_cap_and_totals_stay_exact() {
    const CAP: usize = 1_000;
    const QUERIES: u32 = 1_000_000;
    let mut t = DnsTracker::with_limits(
        DnsSettings { timeout: Duration::from_secs(5), max_names: 100 },
        CAP,
        Duration::from_secs(3_600),
    );
    // Every (client, server, qtype) combination once (a few names), 12 qtypes,
    // more than the overflow slots.
    const QTYPES: [u16; 12] = [1, 2, 5, 6, 12, 15, 16, 28, 33, 35, 43, 255];
    for i in 0..QUERIES {
        let qtype = QTYPES[i as usize % QTYPES.len()];
        let rest = i / QTYPES.len() as u32;
        exchange(&mut t, i as u16, &format!("n{}.test", i % 10), qtype, rest / 1_000, rest % 1_000, 1);
    }
    assert_eq!(t.counters().malformed, 0);
    let rows = t.rows();
    assert!(rows.len() <= CAP, "{} rows", rows.len());
    let overflow: Vec<&DnsRow> = rows.iter().filter(|r| r.server == OTHER).collect();
    assert!(!overflow.is_empty() && overflow.len() <= rows::OVERFLOW_SLOTS, "{}", overflow.len());
    assert!(overflow.iter().any(|r| r.qtype == OTHER), "further qtypes share the last overflow row");
    assert_eq!(rows.iter().map(|r| r.queries).sum::<u64>(), u64::from(QUERIES), "no query lost");
    let answers: u64 = rows.iter().flat_map(|r| r.rcodes.values()).sum();
    assert_eq!(answers, u64::from(QUERIES), "no answer lost");
    let c = t.counters();
    assert_eq!((c.rows, c.max_rows), (rows.len() as u64, CAP as u64));
    assert!(c.series_folded >= u64::from(QUERIES) - CAP as u64, "{c:?}");
    assert_eq!(overflow.iter().map(|r| r.queries).sum::<u64>(), c.series_folded, "every fold counted");
}

#[test]
fn a_flood_of_new_names_on_a_full_name_set_does_bounded_work() {
    const NAMES: usize = 2_000;
    const FLOOD: u32 = 100_000;
    let mut t = tracker(NAMES);
    for i in 0..NAMES as u32 {
        for _ in 0..=(i % 3) {
            exchange(&mut t, 1, &format!("steady{i}.test"), 1, 0, 1, 1);
        }
    }
    let before = t.names.steps();
    for i in 0..FLOOD {
        exchange(&mut t, 2, &format!("flood{i}.test"), 1, 0, 1, 2);
    }
    let steps = t.names.steps() - before;
    // A scan of the names would be NAMES steps per new name (2 * 10^8 here).
    assert!(steps <= 3 * u64::from(FLOOD) + 3 * NAMES as u64, "{steps} heap steps for {FLOOD} names");
    let c = t.counters();
    assert_eq!((c.names, c.names_folded), (NAMES as u64, u64::from(FLOOD)));
    let rows = t.rows();
    assert!(rows.len() <= NAMES + 1, "one row per name, plus `other`: {}", rows.len());
    let total: u64 = rows.iter().map(|r| r.queries).sum();
    assert_eq!(total, c.queries, "folding loses no query");
    // The steady names queried more than once outlive the flood of one-off names.
    assert!(rows.iter().any(|r| r.name == "steady2.test"));
}

#[test]
fn idle_rows_expire_and_are_counted() {
    let mut t = DnsTracker::with_limits(
        DnsSettings { timeout: Duration::from_secs(5), max_names: 10 },
        100,
        Duration::from_secs(10),
    );
    exchange(&mut t, 1, "idle.test", 1, 0, 1, 1_000);
    exchange(&mut t, 2, "busy.test", 1, 0, 1, 1_000);
    exchange(&mut t, 3, "busy.test", 1, 0, 1, 9_000);
    t.expire(10_500 * 1_000_000);
    assert_eq!((t.rows().len(), t.counters().rows_expired), (2, 0), "nothing idle for 10 s yet");
    t.expire(13_500 * 1_000_000);
    let names: Vec<String> = t.rows().into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["busy.test"]);
    assert_eq!((t.counters().rows_expired, t.counters().rows), (1, 1));
    // Queried again, the name starts a new row.
    exchange(&mut t, 4, "idle.test", 1, 0, 1, 13_000);
    assert_eq!(t.rows().iter().find(|r| r.name == "idle.test").map(|r| r.queries), Some(1));
}
