//! Traffic helpers: full-duplex TCP exchanges with exact byte counts.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use crate::sock::{TCP_CLOSE, tcp_info};

/// The outcome of [`tcp_exchange`].
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    /// Payload bytes read before EOF.
    pub received: usize,
    /// `tcp_info` once the connection is fully closed (state CLOSE): its counters are final.
    pub info: libc::tcp_info,
}

/// Writes `send` bytes (from a helper thread) and then shuts down the write side, while reading until EOF on
/// this thread; then waits until the socket is CLOSE (both FINs sent and acknowledged) and reads its final
/// `tcp_info`. The stream is closed on return.
pub fn tcp_exchange(stream: TcpStream, send: usize) -> Exchange {
    let mut writer = stream.try_clone().expect("clone TcpStream");
    let sender = std::thread::Builder::new()
        .name("tcp-exchange-writer".to_string())
        .spawn(move || {
            let chunk = crate::payload(64 * 1024, 7);
            let mut left = send;
            while left > 0 {
                let n = left.min(chunk.len());
                writer.write_all(&chunk[..n]).expect("write payload");
                left -= n;
            }
            writer.shutdown(Shutdown::Write).expect("shutdown(Write)");
        })
        .expect("spawn writer");
    let received = read_to_eof(&stream);
    crate::netns::join(sender);
    let info = wait_closed(&stream, Duration::from_secs(5));
    Exchange { received, info }
}

/// Waits until the socket's TCP state is CLOSE and returns its final `tcp_info`.
///
/// A socket whose owner still holds the descriptor goes to CLOSE once its FIN is acknowledged and the peer's
/// FIN received (the TIME_WAIT part lives in a separate mini-socket): nothing more is sent or counted on it.
pub fn wait_closed(stream: &TcpStream, timeout: Duration) -> libc::tcp_info {
    crate::poll_until(timeout, Duration::from_millis(5), "the socket to reach TCP state CLOSE", || {
        let info = tcp_info(stream);
        if info.tcpi_state == TCP_CLOSE { Ok(info) } else { Err(format!("tcpi_state {}", info.tcpi_state)) }
    })
}

/// Reads until EOF; returns the number of bytes read.
pub fn read_to_eof(mut stream: &TcpStream) -> usize {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read after {total} bytes: {e}"),
        }
    }
}

/// Runs `plan` request/response exchanges (client→server bytes, server→client bytes), one connection
/// each, from a fresh client namespace to a server in a fresh server namespace joined by a veth pair;
/// returns the server's address. Both namespaces are gone on return.
pub fn exchanges_between_namespaces(tag: &str, plan: &'static [(usize, usize)]) -> std::net::SocketAddr {
    let client_ns = crate::NetNs::new(&format!("{tag}-c"));
    let server_ns = crate::NetNs::new(&format!("{tag}-s"));
    let link = crate::veth_link(&client_ns, &server_ns);
    let server_ip: std::net::IpAddr = link.b_v4.into();
    let listener = server_ns.run(move || std::net::TcpListener::bind((server_ip, 0)).expect("bind"));
    let server_addr = listener.local_addr().expect("addr");
    let server = server_ns.spawn(move || {
        for &(up, down) in plan {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = vec![0u8; up];
            s.read_exact(&mut buf).expect("read request");
            s.write_all(&crate::payload(down, 1)).expect("write response");
        }
    });
    client_ns.run(move || {
        for &(up, down) in plan {
            let mut s = TcpStream::connect(server_addr).expect("connect");
            s.write_all(&crate::payload(up, 2)).expect("write request");
            let mut buf = vec![0u8; down];
            s.read_exact(&mut buf).expect("read response");
            s.shutdown(Shutdown::Write).expect("shutdown");
            read_to_eof(&s);
        }
    });
    crate::join(server);
    server_addr
}
