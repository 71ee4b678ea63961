//! Failed connections: refused (nothing listens: RST to the SYN), reset (the server aborts with
//! SO_LINGER 0 after reading the request), timeout (SYNs dropped by a listener whose accept queue is
//! full; `TCP_SYNCNT=1` ends the connect after ~3 s).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use eddy_tests::{payload, set_linger_zero, socket_cookie, tcp_connect_bound};
use serde_json::json;

use crate::flows::{Want, expect_records};
use crate::scenario::{Ctx, Outcome};

const WITHIN: Duration = Duration::from_secs(15);

fn any_local(remote: SocketAddr) -> SocketAddr {
    if remote.is_ipv4() {
        "127.0.0.1:0".parse().expect("address")
    } else {
        "[::1]:0".parse().expect("address")
    }
}

/// The client-side record of a failed connect: outgoing, no byte, `failure`.
fn failed(local: SocketAddr, remote: SocketAddr, cookie: u64, failure: &'static str) -> Want {
    let mut w = Want::tcp("client", local, remote, (0, 0)).cookie(cookie);
    w.failure = Some(failure);
    w
}

pub fn refused(ctx: &Ctx) -> Outcome {
    let remote: SocketAddr = "127.0.2.5:20005".parse().expect("address");
    let (local, cookie, result) = tcp_connect_bound(any_local(remote), remote, None);
    match result {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => {
            return Outcome::fail(
                format!("connect to the closed port {remote}: expected ECONNREFUSED, got {other:?}"),
                json!({}),
            );
        }
    }
    let wants = [failed(local, remote, cookie, "refused")];
    expect_records(
        &ctx.agent,
        &wants,
        WITHIN,
        format!("{local} -> {remote}: failure refused, 0/0 B"),
        json!({}),
    )
}

pub fn reset(ctx: &Ctx) -> Outcome {
    const REQUEST: usize = 10;
    let server: SocketAddr = "127.0.2.6:20006".parse().expect("address");
    let listener = TcpListener::bind(server).unwrap_or_else(|e| panic!("bind {server}: {e}"));
    let accept = std::thread::spawn(move || {
        let (mut stream, peer) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(Duration::from_secs(20))).expect("read timeout");
        let cookie = socket_cookie(&stream);
        let mut buf = [0u8; REQUEST];
        stream.read_exact(&mut buf).expect("read request");
        // SO_LINGER {on, 0}: close() aborts with a RST instead of a FIN.
        set_linger_zero(&stream);
        drop(stream);
        (peer, cookie)
    });
    let mut client = TcpStream::connect(server).unwrap_or_else(|e| panic!("connect {server}: {e}"));
    client.set_read_timeout(Some(Duration::from_secs(20))).expect("read timeout");
    let local = client.local_addr().expect("local address");
    let cookie = socket_cookie(&client);
    client.write_all(&payload(REQUEST, 3)).expect("write request");
    let mut buf = [0u8; 16];
    let read = client.read(&mut buf);
    let (peer, server_cookie) = eddy_tests::join(accept);
    drop(client);
    match read {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => {
            return Outcome::fail(
                format!("read after the server's abortive close: expected ECONNRESET, got {other:?}"),
                json!({}),
            );
        }
    }
    assert_eq!(peer, local, "accepted peer");
    let mut c = Want::tcp("client", local, server, (REQUEST as u64, 0)).cookie(cookie);
    c.failure = Some("reset");
    // The aborting end: "reset" too (RST after establishment, either end, or SO_LINGER 0 abort).
    let mut s = Want::tcp("server", server, local, (0, REQUEST as u64)).cookie(server_cookie);
    s.failure = Some("reset");
    expect_records(
        &ctx.agent,
        &[c, s],
        WITHIN,
        format!("client {local} (sent {REQUEST} B) and server (SO_LINGER 0): failure reset"),
        json!({}),
    )
}

/// A listener with an accept backlog of 0 that never accepts: once a connection waits in its accept queue
/// the kernel drops further SYNs without answering.
fn full_listener(server: SocketAddr) -> (OwnedFd, Vec<TcpStream>) {
    // SAFETY: plain socket(2); the result is checked before use and owned below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(raw >= 0, "socket(): {}", std::io::Error::last_os_error());
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let std::net::IpAddr::V4(ip) = server.ip() else { panic!("IPv4 expected") };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: server.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a valid sockaddr_in for the duration of the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "bind {server}: {}", std::io::Error::last_os_error());
    // SAFETY: listen(2) on our own socket.
    let rc = unsafe { libc::listen(fd.as_raw_fd(), 0) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
    // Fill the accept queue: connect until one connect does not complete (its SYN was dropped).
    let mut fillers = Vec::new();
    for _ in 0..4 {
        match TcpStream::connect_timeout(&server, Duration::from_millis(1500)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    (fd, fillers)
}

pub fn timeout(ctx: &Ctx) -> Outcome {
    let server: SocketAddr = "127.0.2.7:20007".parse().expect("address");
    let (listener, fillers) = full_listener(server);
    let started = Instant::now();
    // TCP_SYNCNT=1: the SYN and one retransmission (1 s + 2 s), then ETIMEDOUT.
    let (local, cookie, result) = tcp_connect_bound(any_local(server), server, Some(1));
    let took = started.elapsed();
    let data = json!({"fillers": fillers.len(), "connect_seconds": took.as_secs_f64()});
    match result {
        Err(e) if e.kind() == ErrorKind::TimedOut => {}
        other => {
            return Outcome::fail(
                format!(
                    "connect to the full listener {server}: expected ETIMEDOUT, got {other:?} after {took:?}"
                ),
                data,
            );
        }
    }
    let wants = [failed(local, server, cookie, "timeout")];
    let o = expect_records(
        &ctx.agent,
        &wants,
        WITHIN,
        format!("{local} -> {server}: failure timeout after {:.1} s, 0/0 B", took.as_secs_f64()),
        data,
    );
    drop((fillers, listener));
    o
}
