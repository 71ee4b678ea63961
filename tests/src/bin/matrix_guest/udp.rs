//! UDP scenarios: a connected client, an unconnected client talking to two servers (one record per
//! peer), and a connected client over `::1`. Servers echo every datagram; every record, on both ends,
//! must carry the exact bytes and datagrams each way.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use eddy_tests::{payload, socket_cookie};
use serde_json::json;

use crate::flows::{Want, expect_records};
use crate::scenario::{Ctx, Outcome};

const WITHIN: Duration = Duration::from_secs(10);
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// Echoes `count` datagrams back to their senders.
fn echo(socket: UdpSocket, count: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        socket.set_read_timeout(Some(RECV_TIMEOUT)).expect("read timeout");
        let mut buf = vec![0u8; 2048];
        for i in 0..count {
            let (n, peer) = socket
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("echo: datagram {i} of {count} not received: {e}"));
            socket.send_to(&buf[..n], peer).expect("echo send_to");
        }
    })
}

fn bind(addr: &str) -> (UdpSocket, SocketAddr, u64) {
    let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let a = s.local_addr().expect("local address");
    let c = socket_cookie(&s);
    (s, a, c)
}

/// A connected client sends `sizes` to `server_addr` (echoed); both records exact.
fn connected_exchange(ctx: &Ctx, server_addr: &str, client_addr: &str, sizes: &[usize]) -> Outcome {
    if let Some(why) = ctx.unavailable("udp") {
        return Outcome::fail(why, json!({}));
    }
    let (server, s, sc) = bind(server_addr);
    let (client, a, ac) = bind(client_addr);
    client.connect(s).expect("connect");
    client.set_read_timeout(Some(RECV_TIMEOUT)).expect("read timeout");
    let echoer = echo(server, sizes.len());
    let mut buf = vec![0u8; 2048];
    for &size in sizes {
        client.send(&payload(size, 4)).expect("send");
        let n = client.recv(&mut buf).unwrap_or_else(|e| panic!("echo of {size} B lost: {e}"));
        assert_eq!(n, size, "echo size");
    }
    eddy_tests::join(echoer);
    let bytes: u64 = sizes.iter().sum::<usize>() as u64;
    let dg = sizes.len() as u64;
    let wants = [
        Want::udp("client", a, s, (bytes, bytes), (dg, dg)).cookie(ac),
        Want::udp("server", s, a, (bytes, bytes), (dg, dg)).cookie(sc),
    ];
    expect_records(
        &ctx.agent,
        &wants,
        WITHIN,
        format!("{a} <-> {s}: {dg} datagrams / {bytes} B each way, both ends"),
        json!({"sizes": sizes}),
    )
}

pub fn connected(ctx: &Ctx) -> Outcome {
    connected_exchange(ctx, "127.0.3.1:30001", "127.0.0.1:0", &[100, 200, 300])
}

pub fn ipv6(ctx: &Ctx) -> Outcome {
    if let Some(skip) = crate::scenario::without_ipv6() {
        return skip;
    }
    connected_exchange(ctx, "[::1]:30004", "[::1]:0", &[111, 222])
}

/// One unconnected client: 150 B and 250 B to server 2, 50 B to server 3 (echoed): the client has one
/// record per peer.
pub fn unconnected(ctx: &Ctx) -> Outcome {
    if let Some(why) = ctx.unavailable("udp") {
        return Outcome::fail(why, json!({}));
    }
    let (server2, s2, c2) = bind("127.0.3.2:30002");
    let (server3, s3, c3) = bind("127.0.3.3:30003");
    let (client, b, bc) = bind("127.0.0.1:0");
    client.set_read_timeout(Some(RECV_TIMEOUT)).expect("read timeout");
    let plan = [(s2, 150usize), (s2, 250), (s3, 50)];
    let e2 = echo(server2, 2);
    let e3 = echo(server3, 1);
    let mut buf = vec![0u8; 2048];
    for &(to, size) in &plan {
        client.send_to(&payload(size, 6), to).expect("send_to");
        let (n, from) = client.recv_from(&mut buf).unwrap_or_else(|e| panic!("echo of {size} B lost: {e}"));
        assert_eq!((n, from), (size, to), "echo");
    }
    eddy_tests::join(e2);
    eddy_tests::join(e3);
    let wants = [
        Want::udp("client", b, s2, (400, 400), (2, 2)).cookie(bc),
        Want::udp("client", b, s3, (50, 50), (1, 1)).cookie(bc),
        Want::udp("server", s2, b, (400, 400), (2, 2)).cookie(c2),
        Want::udp("server", s3, b, (50, 50), (1, 1)).cookie(c3),
    ];
    expect_records(
        &ctx.agent,
        &wants,
        WITHIN,
        format!("{b}: split per peer, {s2} 2 datagrams / 400 B, {s3} 1 / 50 B each way; servers exact"),
        json!({"plan": plan.iter().map(|(to, n)| format!("{to} {n} B")).collect::<Vec<_>>()}),
    )
}
