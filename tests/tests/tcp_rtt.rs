//! RTT: a link with 50 ms of one-way delay (client→server); a few request/response exchanges; the client
//! record's `rtt_us` must be within ±25% of 50 ms.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use eddy_tests::*;

const DELAY: Duration = Duration::from_millis(50);
const EXCHANGES: usize = 5;
const MESSAGE: usize = 100;

#[test]
fn tcp_rtt_matches_link_delay() {
    if !require_privileges() {
        return;
    }
    if let Err(why) = impairment_available() {
        skip(&why);
        return;
    }
    let client_ns = NetNs::new("rtt-c");
    let server_ns = NetNs::new("rtt-s");
    let link = ImpairedLink::new(&client_ns, &server_ns, Impairment { delay: DELAY, loss_percent: 0 });
    let server_ip = link.b_v4();
    let listener = server_ns.run(move || TcpListener::bind((server_ip, 0)).expect("bind server"));
    let server_addr = listener.local_addr().expect("server address");

    let capture = Capture::start(Duration::from_secs(6));
    let server = std::thread::spawn(move || {
        let (mut stream, peer) = listener.accept().expect("accept");
        let mut buf = [0u8; MESSAGE];
        for _ in 0..EXCHANGES {
            stream.read_exact(&mut buf).expect("read request");
            stream.write_all(&buf).expect("write response");
        }
        assert_eq!(read_to_eof(&stream), 0, "unexpected bytes after the exchanges");
        peer
    });
    let (local, tcpi_rtt) = client_ns.run(move || {
        let mut stream = TcpStream::connect(server_addr).expect("connect");
        let local = stream.local_addr().expect("local address");
        let request = payload(MESSAGE, 9);
        let mut buf = [0u8; MESSAGE];
        for _ in 0..EXCHANGES {
            stream.write_all(&request).expect("write request");
            stream.read_exact(&mut buf).expect("read response");
        }
        let rtt = tcp_info(&stream).tcpi_rtt;
        stream.shutdown(Shutdown::Write).expect("shutdown(Write)");
        assert_eq!(read_to_eof(&stream), 0, "unexpected bytes after the exchanges");
        (local, rtt)
    });
    assert_eq!(join(server), local);
    eprintln!("client tcpi_rtt {tcpi_rtt} us");
    capture.assert_window_open("the exchanges");
    let records = capture.finish();

    let expected = DELAY.as_micros() as u64;
    let (low, high) = (expected * 3 / 4, expected * 5 / 4);
    let mut c = Checker::new();
    let ctx = format!("client {local} -> {server_addr} (kernel tcpi_rtt {tcpi_rtt} us)");
    match find_records(&records, "tcp", local, server_addr).as_slice() {
        [r] => {
            match r.rtt_us {
                Some(rtt) => c.check(
                    (low..=high).contains(&rtt),
                    &ctx,
                    format!("rtt_us {rtt} outside [{low}, {high}] (50 ms ± 25%)"),
                ),
                None => c.fail(format!("{ctx}: rtt_us is null")),
            }
            c.check(r.rtt_var_us.is_some(), &ctx, "rtt_var_us is null");
            c.eq(&ctx, "bytes_sent", r.bytes_sent, (EXCHANGES * MESSAGE) as u64);
            c.eq(&ctx, "bytes_received", r.bytes_received, (EXCHANGES * MESSAGE) as u64);
        }
        found => c.fail(format!("{ctx}: {} client-side records, expected 1", found.len())),
    }
    c.finish(&format!("records of this test:\n{}", describe_records(&records, &[local, server_addr])));
}
