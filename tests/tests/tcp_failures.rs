//! Failed connections: refused (RST to the SYN), reset (RST on an established connection), timeout (SYNs that
//! vanish). Each runs in its own pair of namespaces and its own capture.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use eddy_tests::*;

struct Setup {
    client_ns: NetNs,
    server_ns: NetNs,
    link: VethLink,
}

fn setup(tag: &str) -> Setup {
    let client_ns = NetNs::new(&format!("{tag}-c"));
    let server_ns = NetNs::new(&format!("{tag}-s"));
    let link = veth_link(&client_ns, &server_ns);
    Setup { client_ns, server_ns, link }
}

/// What the client-side record of a failed connection must say.
struct Expected<'a> {
    failure: &'a str,
    bytes: (u64, u64),
    pid: bool,
}

/// Checks the one client-side record of a failed connection.
fn check_failure(
    records: &[FlowRecord],
    client_ns: &NetNs,
    (local, remote): (SocketAddr, SocketAddr),
    cookie: u64,
    want: Expected<'_>,
) {
    let Expected { failure, bytes, pid: expect_pid } = want;
    let mut c = Checker::new();
    let ctx = format!("{local} -> {remote}");
    match find_records(records, "tcp", local, remote).as_slice() {
        [r] => {
            c.eq(&ctx, "failure", r.failure.as_deref(), Some(failure));
            c.eq(&ctx, "direction", r.direction.as_str(), "outgoing");
            c.eq(&ctx, "bytes_sent", r.bytes_sent, bytes.0);
            c.eq(&ctx, "bytes_received", r.bytes_received, bytes.1);
            c.check(r.opened_at.is_some(), &ctx, "opened_at is null");
            c.check(r.closed_at.is_some(), &ctx, "closed_at is null");
            c.eq(&ctx, "netns", r.netns, Some(client_ns.inode()));
            if expect_pid {
                c.eq(&ctx, "pid", r.pid, Some(std::process::id()));
            }
            c.eq(&ctx, "cookie", r.cookie, Some(cookie));
        }
        found => c.fail(format!("{ctx}: {} client-side records, expected 1", found.len())),
    }
    c.finish(&format!("records of this test:\n{}", describe_records(records, &[local, remote])));
}

/// Runs each case with the preferred hooks and with the sockops lifecycle fallback.
fn capture(duration: Duration, sockops: bool) -> Capture {
    let disabled: &[&str] = if sockops { &[hooks::LIFECYCLE_TP_BTF] } else { &[] };
    Capture::start_with(CaptureOptions::with_disabled_hooks(duration, disabled))
}

#[test]
fn tcp_failure_refused() {
    refused(false);
}

#[test]
fn tcp_failure_refused_sockops() {
    refused(true);
}

#[test]
fn tcp_failure_reset() {
    reset(false);
}

#[test]
fn tcp_failure_reset_sockops() {
    reset(true);
}

#[test]
fn tcp_failure_timeout() {
    timeout(false);
}

#[test]
fn tcp_failure_timeout_sockops() {
    timeout(true);
}

fn refused(sockops: bool) {
    if !require_privileges() {
        return;
    }
    let s = setup("refused");
    let client_ip: IpAddr = s.link.a_v4.into();
    // Nothing listens in the fresh server namespace: its kernel answers the SYN with a RST.
    let remote = SocketAddr::new(s.link.b_v4.into(), 9);
    let capture = capture(Duration::from_secs(4), sockops);
    let (local, cookie, result) =
        s.client_ns.run(move || tcp_connect_bound(SocketAddr::new(client_ip, 0), remote, None));
    match result {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => panic!("connect to the closed port {remote}: expected ECONNREFUSED, got {other:?}"),
    }
    capture.assert_window_open("the refused connect");
    let records = capture.finish();
    // sockops runs in softirq or without the process: no pid for connections that moved no byte.
    let want = Expected { failure: "refused", bytes: (0, 0), pid: !sockops };
    check_failure(&records, &s.client_ns, (local, remote), cookie, want);
    drop(s.server_ns);
}

fn reset(sockops: bool) {
    if !require_privileges() {
        return;
    }
    let s = setup("reset");
    let server_ip: IpAddr = s.link.b_v4.into();
    let listener = s.server_ns.run(move || TcpListener::bind((server_ip, 0)).expect("bind server"));
    let remote = listener.local_addr().expect("server address");
    const REQUEST: usize = 10;

    let capture = capture(Duration::from_secs(4), sockops);
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut buf = [0u8; REQUEST];
        stream.read_exact(&mut buf).expect("read request");
        // SO_LINGER {on, 0}: close() aborts with a RST instead of a FIN.
        set_linger_zero(&stream);
        drop(stream);
    });
    let (local, cookie, read_result) = s.client_ns.run(move || {
        let mut stream = TcpStream::connect(remote).expect("connect");
        let local = stream.local_addr().expect("local address");
        let cookie = socket_cookie(&stream);
        stream.write_all(&payload(REQUEST, 3)).expect("write request");
        let mut buf = [0u8; 16];
        let result = stream.read(&mut buf);
        (local, cookie, result)
    });
    join(server);
    match read_result {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("read after the server's abortive close: expected ECONNRESET, got {other:?}"),
    }
    capture.assert_window_open("the reset connection");
    let records = capture.finish();
    // With sockops, only a byte hook or the socket iterator can name the process: neither is sure to.
    let want = Expected { failure: "reset", bytes: (REQUEST as u64, 0), pid: !sockops };
    // The aborting end (SO_LINGER 0) reports the reset too, with what it received.
    let mut c = Checker::new();
    match find_records(&records, "tcp", remote, local).as_slice() {
        [r] => {
            let ctx = format!("aborting server {remote} <- {local}");
            c.eq(&ctx, "failure", r.failure.as_deref(), Some("reset"));
            c.eq(&ctx, "bytes (sent, received)", (r.bytes_sent, r.bytes_received), (0, REQUEST as u64));
        }
        found => c.fail(format!("{} server-side records {remote} <- {local}, expected 1", found.len())),
    }
    c.finish(&describe_records(&records, &[local, remote]));
    check_failure(&records, &s.client_ns, (local, remote), cookie, want);
}

fn timeout(sockops: bool) {
    if !require_privileges() {
        return;
    }
    let s = setup("timeout");
    // An address of the link's subnet that nobody has, with a static neighbour entry to a MAC nobody has: the
    // SYNs leave through the veth and the peer namespace drops them (not addressed to it).
    let target_ip = s.link.unused_v4(99);
    s.client_ns.add_black_hole_neighbour(&s.link.a_if, &target_ip.to_string());
    let remote = SocketAddr::new(target_ip.into(), 80);
    let client_ip: IpAddr = s.link.a_v4.into();

    let capture = capture(Duration::from_secs(7), sockops);
    let started = Instant::now();
    // TCP_SYNCNT=1: the SYN and one retransmission (1 s + 2 s), then ETIMEDOUT.
    let (local, cookie, result) =
        s.client_ns.run(move || tcp_connect_bound(SocketAddr::new(client_ip, 0), remote, Some(1)));
    match result {
        Err(e) if e.kind() == ErrorKind::TimedOut => {}
        other => panic!("connect to the black hole {remote}: expected ETIMEDOUT, got {other:?}"),
    }
    eprintln!("connect timed out after {:?}", started.elapsed());
    capture.assert_window_open("the timed-out connect");
    let records = capture.finish();
    let want = Expected { failure: "timeout", bytes: (0, 0), pid: !sockops };
    check_failure(&records, &s.client_ns, (local, remote), cookie, want);
}
