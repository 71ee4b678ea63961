//! A tiny TCP map (64 entries) and 200 concurrent connections (400 sockets): the agent must count the
//! overflow, stay healthy, and never publish a partial record: every record it has for these connections is
//! exact.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use eddy_tests::*;

const CONNECTIONS: usize = 200;
const MAP_ENTRIES: &str = "64";

fn up(i: usize) -> usize {
    1_000 + 7 * i
}

fn down(i: usize) -> usize {
    3_000 + 13 * i
}

#[test]
fn map_overflow_counted_and_no_partial_records() {
    if !require_privileges() {
        return;
    }
    let agent = RunAgent::start(&[
        "--flow-map-entries",
        MAP_ENTRIES,
        "--poll-interval",
        "200ms",
        "--closed-flow-retention",
        "100000",
    ]);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let server_addr = listener.local_addr().expect("server address");

    // Open all connections and exchange each one's distinct amounts; keep them all open.
    let mut conns: Vec<(TcpStream, TcpStream)> = Vec::with_capacity(CONNECTIONS);
    let mut index: HashMap<SocketAddr, usize> = HashMap::new();
    let mut buf = vec![0u8; down(CONNECTIONS)];
    for i in 0..CONNECTIONS {
        let mut client = TcpStream::connect(server_addr).expect("connect");
        let (mut server, peer) = listener.accept().expect("accept");
        assert_eq!(Some(peer), client.local_addr().ok());
        client.write_all(&payload(up(i), 1)).expect("client write");
        server.read_exact(&mut buf[..up(i)]).expect("server read");
        server.write_all(&payload(down(i), 2)).expect("server write");
        client.read_exact(&mut buf[..down(i)]).expect("client read");
        index.insert(peer, i);
        conns.push((client, server));
    }
    // Close them all cleanly: client FIN, server reads EOF and closes, client reads EOF.
    for (client, server) in conns.drain(..) {
        client.shutdown(Shutdown::Write).expect("shutdown(Write)");
        assert_eq!(read_to_eof(&server), 0);
        drop(server);
        assert_eq!(read_to_eof(&client), 0);
    }

    // Wait until every record of these connections is closed and the set stops changing.
    let mut previous = usize::MAX;
    let ours = poll_until(
        Duration::from_secs(15),
        Duration::from_millis(500),
        "all records of the 200 connections to be closed and stable",
        || {
            let flows = agent.flows();
            let ours: Vec<FlowRecord> = flows
                .into_iter()
                .filter(|r| {
                    r.protocol == "tcp"
                        && (r.local.socket_addr() == server_addr || r.remote.socket_addr() == server_addr)
                })
                .collect();
            let open = ours.iter().filter(|r| r.closed_at.is_none()).count();
            let stable = ours.len() == previous;
            previous = ours.len();
            if open == 0 && stable && ours.len() >= 16 {
                Ok(ours)
            } else {
                Err(format!("{} records, {open} still open, stable: {stable}", ours.len()))
            }
        },
    );

    let status = agent.status();
    let map_full = status["drops"]["tcp_map_full"].as_u64();
    let health = agent.get("/healthz");

    let mut c = Checker::new();
    c.check(
        map_full.is_some_and(|n| n > 0),
        "/status",
        format!(
            "drops.tcp_map_full = {map_full:?}, expected > 0 with a {MAP_ENTRIES}-entry map and 400 sockets"
        ),
    );
    c.eq("/healthz", "status", health.status, 200);
    let capacity = status["maps"]
        .as_array()
        .and_then(|maps| maps.iter().find(|m| m["name"] == "tcp_flows"))
        .and_then(|m| m["capacity"].as_u64());
    c.eq("/status maps.tcp_flows", "capacity", capacity, Some(64));

    let mut seen: HashMap<(SocketAddr, SocketAddr), usize> = HashMap::new();
    let mut tracked: Vec<bool> = vec![false; CONNECTIONS];
    for r in &ours {
        let (local, remote) = (r.local.socket_addr(), r.remote.socket_addr());
        *seen.entry((local, remote)).or_default() += 1;
        let ctx = format!("{local} -> {remote}");
        let (client, direction) =
            if local == server_addr { (remote, "incoming") } else { (local, "outgoing") };
        let Some(&i) = index.get(&client) else {
            c.fail(format!("{ctx}: record for a connection this test did not make: {}", r.summary()));
            continue;
        };
        tracked[i] = true;
        let (sent, received) = if direction == "outgoing" { (up(i), down(i)) } else { (down(i), up(i)) };
        c.eq(&ctx, "direction", r.direction.as_str(), direction);
        c.eq(&ctx, "bytes_sent", r.bytes_sent, sent as u64);
        c.eq(&ctx, "bytes_received", r.bytes_received, received as u64);
        c.eq(&ctx, "failure", r.failure.as_deref(), None);
    }
    for ((l, r), n) in &seen {
        c.check(*n == 1, &format!("{l} -> {r}"), format!("{n} records, expected at most 1"));
    }
    let tracked_count = tracked.iter().filter(|t| **t).count();
    c.check(
        tracked_count >= 16,
        "tracking",
        format!("only {tracked_count} of {CONNECTIONS} connections have a record (expected >= 16)"),
    );
    eprintln!(
        "{tracked_count} of {CONNECTIONS} connections tracked ({} records); drops.tcp_map_full = {map_full:?}",
        ours.len()
    );
    let pretty = serde_json::to_string_pretty(&status).unwrap_or_default();
    c.finish(&format!("/status:\n{pretty}\nrecords:\n{}", describe_records(&ours, &[])));
}
