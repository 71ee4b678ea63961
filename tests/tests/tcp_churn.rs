//! 2,000 short-lived loopback connections: every one must appear, on both ends, with exact byte counts.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use eddy_tests::*;

const CONNECTIONS: usize = 2_000;
const REQUEST: usize = 100;
const RESPONSE: usize = 200;

#[test]
fn tcp_churn_every_connection_counted() {
    if !require_privileges() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let server_addr = listener.local_addr().expect("server address");

    let capture = Capture::start(Duration::from_secs(6));
    let server = std::thread::spawn(move || {
        let response = payload(RESPONSE, 2);
        let mut request = [0u8; REQUEST];
        (0..CONNECTIONS)
            .map(|_| {
                let (mut s, peer) = listener.accept().expect("accept");
                let cookie = socket_cookie(&s);
                s.read_exact(&mut request).expect("read request");
                s.write_all(&response).expect("write response");
                (cookie, peer)
            })
            .collect::<Vec<_>>()
    });
    let started = Instant::now();
    let request = payload(REQUEST, 1);
    let mut response = [0u8; RESPONSE];
    let clients: Vec<(u64, SocketAddr)> = (0..CONNECTIONS)
        .map(|_| {
            let mut s = TcpStream::connect(server_addr).expect("connect");
            let local = s.local_addr().expect("local address");
            let cookie = socket_cookie(&s);
            s.write_all(&request).expect("write request");
            s.read_exact(&mut response).expect("read response");
            (cookie, local)
        })
        .collect();
    let servers = join(server);
    eprintln!("{CONNECTIONS} connections in {:?}", started.elapsed());
    capture.assert_window_open("the connection churn");
    let records = capture.finish();

    // Index this test's records by socket cookie (unique per boot, unlike ephemeral ports).
    let mut by_cookie: HashMap<u64, Vec<&FlowRecord>> = HashMap::new();
    for r in records.iter().filter(|r| {
        r.protocol == "tcp" && (r.local.socket_addr() == server_addr || r.remote.socket_addr() == server_addr)
    }) {
        if let Some(cookie) = r.cookie {
            by_cookie.entry(cookie).or_default().push(r);
        }
    }
    let mut c = Checker::new();
    let mut missing = [0usize; 2];
    for (side, conns, direction, sent, received) in [
        ("client", &clients, "outgoing", REQUEST, RESPONSE),
        ("server", &servers, "incoming", RESPONSE, REQUEST),
    ] {
        for &(cookie, peer_or_local) in conns {
            let (local, remote) =
                if side == "client" { (peer_or_local, server_addr) } else { (server_addr, peer_or_local) };
            let ctx = format!("{side} {local} -> {remote} (cookie {cookie})");
            match by_cookie.get(&cookie).map(Vec::as_slice) {
                Some([r]) => {
                    c.eq(&ctx, "local", r.local.socket_addr(), local);
                    c.eq(&ctx, "remote", r.remote.socket_addr(), remote);
                    c.eq(&ctx, "direction", r.direction.as_str(), direction);
                    c.eq(&ctx, "bytes_sent", r.bytes_sent, sent as u64);
                    c.eq(&ctx, "bytes_received", r.bytes_received, received as u64);
                    c.eq(&ctx, "failure", r.failure.as_deref(), None);
                }
                Some(many) => c.fail(format!("{ctx}: {} records with this cookie", many.len())),
                None => {
                    missing[usize::from(side == "server")] += 1;
                    if missing[usize::from(side == "server")] <= 5 {
                        let by_port = find_records(&records, "tcp", local, remote);
                        c.fail(format!(
                            "{ctx}: no record with this cookie; records with this 4-tuple: {:?}",
                            by_port.iter().map(|r| r.summary()).collect::<Vec<_>>()
                        ));
                    }
                }
            }
        }
    }
    c.check(
        missing == [0, 0],
        "summary",
        format!(
            "{} of {CONNECTIONS} client and {} of {CONNECTIONS} server connections have no record",
            missing[0], missing[1]
        ),
    );
    let ours: usize = by_cookie.values().map(Vec::len).sum();
    c.finish(&format!("{ours} records touch {server_addr}"));
}
