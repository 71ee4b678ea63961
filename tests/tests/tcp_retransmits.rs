//! Retransmissions: 4 MiB client→server over a link losing 10% of the client's packets; the client record's
//! `retransmits` must equal the kernel's own `tcpi_total_retrans`, read once the connection is fully closed.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use eddy_tests::*;

const TRANSFER: usize = 4 << 20;

#[test]
fn tcp_retransmits_match_tcp_info() {
    if !require_privileges() {
        return;
    }
    if let Err(why) = impairment_available() {
        skip(&why);
        return;
    }
    let client_ns = NetNs::new("retrans-c");
    let server_ns = NetNs::new("retrans-s");
    let link =
        ImpairedLink::new(&client_ns, &server_ns, Impairment { delay: Duration::ZERO, loss_percent: 10 });
    let server_ip = link.b_v4();
    let listener = server_ns.run(move || TcpListener::bind((server_ip, 0)).expect("bind server"));
    let server_addr = listener.local_addr().expect("server address");

    let capture = Capture::start(Duration::from_secs(6));
    let server = std::thread::spawn(move || {
        let (stream, peer) = listener.accept().expect("accept");
        let received = read_to_eof(&stream);
        // Closing sends our FIN, which also acknowledges the client's FIN.
        drop(stream);
        (peer, received)
    });
    let started = Instant::now();
    let (local, cookie, total_retrans, info_rtt, segs) = client_ns.run(move || {
        let mut stream = TcpStream::connect(server_addr).expect("connect");
        let local = stream.local_addr().expect("local address");
        let cookie = socket_cookie(&stream);
        let data = payload(TRANSFER, 5);
        stream.write_all(&data).expect("write 4 MiB");
        stream.shutdown(Shutdown::Write).expect("shutdown(Write)");
        // EOF means the server's FIN arrived; it acknowledges everything we sent, our FIN included.
        let mut buf = [0u8; 16];
        match stream.read(&mut buf) {
            Ok(0) => {}
            other => panic!("expected EOF from the server, got {other:?}"),
        }
        // Nothing is in flight any more: the socket is CLOSE (its TIME_WAIT lives in a separate mini-socket),
        // so tcpi_total_retrans (and the segment counts) are final.
        let info = wait_closed(&stream, Duration::from_secs(5));
        (local, cookie, info.tcpi_total_retrans, info.tcpi_rtt, (info.tcpi_segs_out, info.tcpi_segs_in))
    });
    let (peer, received) = join(server);
    eprintln!(
        "4 MiB in {:?}: tcpi_total_retrans {total_retrans}, tcpi_rtt {info_rtt} us, wire drops {:?}",
        started.elapsed(),
        link.dropped()
    );
    assert_eq!((peer, received), (local, TRANSFER), "the server got a different connection or byte count");
    assert!(
        total_retrans > 0,
        "the kernel retransmitted nothing despite 10% loss on {local} -> {server_addr}: the impairment is not working"
    );
    capture.assert_window_open("the transfer");
    let records = capture.finish();

    let mut c = Checker::new();
    let ctx = format!("client {local} -> {server_addr}");
    match find_records(&records, "tcp", local, server_addr).as_slice() {
        [r] => {
            c.eq(&ctx, "retransmits (vs tcpi_total_retrans)", r.retransmits, Some(u64::from(total_retrans)));
            c.eq(&ctx, "bytes_sent", r.bytes_sent, TRANSFER as u64);
            c.eq(&ctx, "bytes_received", r.bytes_received, 0);
            c.eq(&ctx, "packets_sent (vs tcpi_segs_out)", r.packets_sent, u64::from(segs.0));
            c.eq(&ctx, "packets_received (vs tcpi_segs_in)", r.packets_received, u64::from(segs.1));
            c.eq(&ctx, "failure", r.failure.as_deref(), None);
            c.eq(&ctx, "cookie", r.cookie, Some(cookie));
        }
        found => c.fail(format!("{ctx}: {} client-side records, expected 1", found.len())),
    }
    let ctx = format!("server {server_addr} <- {local}");
    match find_records(&records, "tcp", server_addr, local).as_slice() {
        [r] => {
            c.eq(&ctx, "bytes_received", r.bytes_received, TRANSFER as u64);
            c.eq(&ctx, "bytes_sent", r.bytes_sent, 0);
        }
        found => c.fail(format!("{ctx}: {} server-side records, expected 1", found.len())),
    }
    c.finish(&format!("records of this test:\n{}", describe_records(&records, &[local, server_addr])));
}
