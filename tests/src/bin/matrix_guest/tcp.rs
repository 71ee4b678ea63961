//! TCP scenarios with exact payload bytes on both ends: one small and one large exchange, a live
//! connection, 500 short connections (each with its own byte counts), and an exchange over `::1`.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eddy_tests::{FlowRecord, payload, read_to_eof, socket_cookie, tcp_exchange};
use serde_json::json;

use crate::flows::{Want, expect_records, summaries};
use crate::scenario::{Ctx, Outcome};

/// Records of a closed connection must show up within this (ring buffer, then the next poll).
const CLOSED_WITHIN: Duration = Duration::from_secs(15);
/// The byte source that reads `tcp_sock` counters only when a connection closes.
pub const BYTES_AT_CLOSE: &str = "tcp_sock counters at close";

pub fn small(ctx: &Ctx) -> Outcome {
    exchange(ctx, "127.0.2.1:20001", 1_234, 4_321)
}

pub fn large(ctx: &Ctx) -> Outcome {
    exchange(ctx, "127.0.2.2:20002", 8 << 20, 3 << 20)
}

pub fn ipv6(ctx: &Ctx) -> Outcome {
    if let Some(skip) = crate::scenario::without_ipv6() {
        return skip;
    }
    exchange(ctx, "[::1]:20008", 2_222, 3_333)
}

fn kernel_counters(info: &libc::tcp_info) -> serde_json::Value {
    json!({"tcpi_bytes_acked": info.tcpi_bytes_acked, "tcpi_bytes_received": info.tcpi_bytes_received,
           "tcpi_segs_out": info.tcpi_segs_out, "tcpi_segs_in": info.tcpi_segs_in})
}

/// One connection to `server`: the client writes `up` bytes and shuts down, the server writes `down` and
/// shuts down; both read to EOF and wait for CLOSE. Both records must be exact.
fn exchange(ctx: &Ctx, server: &str, up: usize, down: usize) -> Outcome {
    let server: SocketAddr = server.parse().expect("server address");
    let listener = TcpListener::bind(server).unwrap_or_else(|e| panic!("bind {server}: {e}"));
    let accept = std::thread::spawn(move || {
        let (stream, peer) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(Duration::from_secs(60))).expect("read timeout");
        let cookie = socket_cookie(&stream);
        let ex = tcp_exchange(stream, down);
        (peer, cookie, ex)
    });
    let client = TcpStream::connect(server).unwrap_or_else(|e| panic!("connect {server}: {e}"));
    client.set_read_timeout(Some(Duration::from_secs(60))).expect("read timeout");
    let local = client.local_addr().expect("local address");
    let cookie = socket_cookie(&client);
    let ex = tcp_exchange(client, up);
    let (peer, server_cookie, server_ex) = eddy_tests::join(accept);
    let data = json!({"up": up, "down": down, "client_kernel": kernel_counters(&ex.info),
                      "server_kernel": kernel_counters(&server_ex.info)});
    if ex.received != down || server_ex.received != up || peer != local {
        return Outcome::fail(
            format!(
                "the exchange itself went wrong: client read {} of {down} B, server read {} of {up} B, \
                 peer {peer} vs {local}",
                ex.received, server_ex.received
            ),
            data,
        );
    }
    let (up, down) = (up as u64, down as u64);
    let wants = [
        Want::tcp("client", local, server, (up, down)).cookie(cookie),
        Want::tcp("server", server, local, (down, up)).cookie(server_cookie),
    ];
    expect_records(
        &ctx.agent,
        &wants,
        CLOSED_WITHIN,
        format!("client {local} sent/received {up}/{down} B, server the reverse, cookies match"),
        data,
    )
}

/// A connection kept open with known bytes: the live records (closed_at null) must show them within a
/// few polls — unless the byte source reads counters only at close, where live bytes are 0 — and the
/// final records must be exact once it closes.
pub fn live(ctx: &Ctx) -> Outcome {
    const UP: usize = 5_555;
    const DOWN: usize = 7_777;
    let server: SocketAddr = "127.0.2.3:20003".parse().expect("address");
    let Exchanged { client, srv, local, cookies: (cc, sc) } = Exchanged::open(server, UP, DOWN);

    let bytes_hook = ctx.chosen("tcp_bytes");
    let at_close = bytes_hook == BYTES_AT_CLOSE;
    let (up, down) = (UP as u64, DOWN as u64);
    let live_want = |side, l, r, bytes, cookie| {
        let mut w = Want::tcp(side, l, r, bytes).cookie(cookie);
        w.closed = Some(false);
        if at_close {
            w.alt_bytes = Some((0, 0));
        }
        w
    };
    let wants = [
        live_want("client", local, server, (up, down), cc),
        live_want("server", server, local, (down, up), sc),
    ];
    let mut data = json!({"tcp_bytes_hook": bytes_hook, "live_zero_allowed": at_close});
    let live = crate::flows::await_records(&ctx.agent, &wants, Duration::from_secs(10));
    let live_note = match &live {
        Ok(records) => {
            data["live_records"] = json!(summaries(records));
            let zero = records.iter().any(|r| (r.bytes_sent, r.bytes_received) == (0, 0));
            if zero {
                format!("live bytes 0 (allowed: tcp_bytes hook is {bytes_hook:?})")
            } else {
                format!("live bytes exact ({bytes_hook})")
            }
        }
        Err(e) => format!("live records wrong after 10 s: {e}"),
    };
    close_both(client, srv);
    let wants = [
        Want::tcp("client", local, server, (up, down)).cookie(cc),
        Want::tcp("server", server, local, (down, up)).cookie(sc),
    ];
    let closed = crate::flows::await_records(&ctx.agent, &wants, CLOSED_WITHIN);
    match (live, closed) {
        (Ok(_), Ok(records)) => {
            data["closed_records"] = json!(summaries(&records));
            Outcome::pass(format!("{live_note}; closed records exact ({UP}/{DOWN} B)"), data)
        }
        (live, closed) => {
            let mut errors = Vec::new();
            if live.is_err() {
                errors.push(live_note);
            }
            if let Err(e) = closed {
                errors.push(format!("closed records: {e}"));
            }
            Outcome::fail(errors.join("; "), data)
        }
    }
}

/// An open connection that has moved known bytes both ways.
pub struct Exchanged {
    pub client: TcpStream,
    pub srv: TcpStream,
    /// The client's address (the server's peer).
    pub local: SocketAddr,
    /// `(client, server)` socket cookies.
    pub cookies: (u64, u64),
}

impl Exchanged {
    /// Connects to `server` (bound here), and sends `up` bytes from the client, then `down` back;
    /// each end reads them whole.
    pub fn open(server: SocketAddr, up: usize, down: usize) -> Exchanged {
        let listener = TcpListener::bind(server).unwrap_or_else(|e| panic!("bind {server}: {e}"));
        let mut client = TcpStream::connect(server).unwrap_or_else(|e| panic!("connect {server}: {e}"));
        let (mut srv, peer) = listener.accept().expect("accept");
        for s in [&client, &srv] {
            s.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
        }
        let local = client.local_addr().expect("local address");
        assert_eq!(peer, local, "accepted peer");
        let cookies = (socket_cookie(&client), socket_cookie(&srv));
        client.write_all(&payload(up, 1)).expect("client write");
        let mut buf = vec![0u8; up.max(down)];
        srv.read_exact(&mut buf[..up]).expect("server read");
        srv.write_all(&payload(down, 2)).expect("server write");
        client.read_exact(&mut buf[..down]).expect("client read");
        Exchanged { client, srv, local, cookies }
    }
}

/// Closes a connection, the client first; both read to EOF so every FIN is exchanged.
pub fn close_both(client: TcpStream, srv: TcpStream) {
    client.shutdown(Shutdown::Write).expect("client shutdown");
    let _ = read_to_eof(&srv);
    srv.shutdown(Shutdown::Write).expect("server shutdown");
    let _ = read_to_eof(&client);
}

/// Bytes the client of churn connection `i` sends: distinct per connection.
fn churn_up(i: usize) -> usize {
    100 + i
}

/// What the churn server answers to a request of `n` bytes.
fn churn_down(n: usize) -> usize {
    3 * n + 7
}

/// `ctx.churn` short-lived connections (2 client and 2 server threads), each with its own byte counts:
/// every one must be reported, exactly, on both ends.
pub fn churn(ctx: &Ctx) -> Outcome {
    let n = ctx.churn;
    let server: SocketAddr = "127.0.2.4:20004".parse().expect("address");
    let listener = Arc::new(TcpListener::bind(server).unwrap_or_else(|e| panic!("bind {server}: {e}")));
    let reserved = Arc::new(AtomicUsize::new(0));
    let servers: Vec<_> = (0..2)
        .map(|_| {
            let (listener, reserved) = (Arc::clone(&listener), Arc::clone(&reserved));
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while reserved.fetch_add(1, Ordering::SeqCst) < n {
                    let (mut s, peer) = listener.accept().expect("accept");
                    s.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
                    let cookie = socket_cookie(&s);
                    let got = read_to_eof(&s);
                    s.write_all(&payload(churn_down(got), 2)).expect("server write");
                    seen.push((cookie, peer, got));
                }
                seen
            })
        })
        .collect();
    let clients: Vec<_> = (0..2)
        .map(|t| {
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                for i in (t..n).step_by(2) {
                    let mut s = TcpStream::connect(server).expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
                    let local = s.local_addr().expect("local address");
                    let cookie = socket_cookie(&s);
                    s.write_all(&payload(churn_up(i), 1)).expect("client write");
                    s.shutdown(Shutdown::Write).expect("shutdown");
                    let got = read_to_eof(&s);
                    assert_eq!(got, churn_down(churn_up(i)), "connection {i}: response bytes");
                    seen.push((cookie, local, churn_up(i)));
                }
                seen
            })
        })
        .collect();
    let clients: Vec<(u64, SocketAddr, usize)> = clients.into_iter().flat_map(eddy_tests::join).collect();
    let servers: Vec<(u64, SocketAddr, usize)> = servers.into_iter().flat_map(eddy_tests::join).collect();
    // (cookie) -> expected record
    let mut wants: Vec<Want> = Vec::with_capacity(2 * n);
    for &(cookie, local, up) in &clients {
        wants.push(Want::tcp("client", local, server, (up as u64, churn_down(up) as u64)).cookie(cookie));
    }
    for &(cookie, peer, up) in &servers {
        wants.push(Want::tcp("server", server, peer, (churn_down(up) as u64, up as u64)).cookie(cookie));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let j = loop {
        let j = match ctx.agent.flows() {
            Ok(records) => judge_churn(&records, &wants, server),
            Err(e) => Judgement { problems: vec![e], ..Judgement::default() },
        };
        if j.problems.is_empty() || std::time::Instant::now() >= deadline {
            break j;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let data = json!({"connections": n, "client_exact": j.ok[0], "server_exact": j.ok[1], "kinds": j.kinds,
                      "problems": j.problems.iter().take(20).collect::<Vec<_>>()});
    let summary = format!("client {}/{n} exact, server {}/{n} exact", j.ok[0], j.ok[1]);
    if j.problems.is_empty() {
        Outcome::pass(summary, data)
    } else {
        let kinds: Vec<String> = j.kinds.iter().map(|(k, n)| format!("{n}× {k}")).collect();
        let shown: Vec<&String> = j.problems.iter().take(3).collect();
        Outcome::fail(format!("{summary} ({}); e.g. {shown:?}", kinds.join(", ")), data)
    }
}

/// What one poll of `/flows` says about the churn connections.
#[derive(Default)]
struct Judgement {
    /// Exact records, `[client, server]`.
    ok: [usize; 2],
    /// Problems by kind (`client: bytes_received 0`, `server: no record`, ...).
    kinds: BTreeMap<String, usize>,
    problems: Vec<String>,
}

/// The kind of a byte mismatch: `bytes_sent 0`, `bytes_received high`, ...
fn byte_kind(field: &str, got: u64, want: u64) -> Option<String> {
    match got.cmp(&want) {
        std::cmp::Ordering::Equal => None,
        _ if got == 0 => Some(format!("{field} 0")),
        std::cmp::Ordering::Greater => Some(format!("{field} high")),
        std::cmp::Ordering::Less => Some(format!("{field} low")),
    }
}

/// Counts exact records per side and classifies every problem.
fn judge_churn(records: &[FlowRecord], wants: &[Want], server: SocketAddr) -> Judgement {
    let mut by_cookie: HashMap<u64, Vec<&FlowRecord>> = HashMap::new();
    for r in records.iter().filter(|r| {
        r.protocol == "tcp" && (r.local.socket_addr() == server || r.remote.socket_addr() == server)
    }) {
        if let Some(c) = r.cookie {
            by_cookie.entry(c).or_default().push(r);
        }
    }
    let mut j = Judgement::default();
    for w in wants {
        let cookie = w.cookie.unwrap_or_default();
        let mut kinds = Vec::new();
        let problem = match by_cookie.get(&cookie).map(Vec::as_slice) {
            Some([r]) => {
                let mut m = w.mismatches(r);
                if r.local.socket_addr() != w.local || r.remote.socket_addr() != w.remote {
                    m.push(format!("tuple {} -> {}", r.local.socket_addr(), r.remote.socket_addr()));
                    kinds.push("tuple".to_string());
                }
                kinds.extend(byte_kind("bytes_sent", r.bytes_sent, w.bytes.0));
                kinds.extend(byte_kind("bytes_received", r.bytes_received, w.bytes.1));
                if m.is_empty() {
                    j.ok[usize::from(w.side == "server")] += 1;
                    continue;
                }
                if kinds.is_empty() {
                    kinds.push("other".to_string());
                }
                format!("{} {} (cookie {cookie}): {}", w.side, w.local, m.join(", "))
            }
            Some(many) => {
                kinds.push("several records".to_string());
                format!("{} {} (cookie {cookie}): {} records", w.side, w.local, many.len())
            }
            None => {
                kinds.push("no record".to_string());
                format!("{} {} -> {} (cookie {cookie}): no record", w.side, w.local, w.remote)
            }
        };
        for k in kinds {
            *j.kinds.entry(format!("{}: {k}", w.side)).or_default() += 1;
        }
        j.problems.push(problem);
    }
    j
}
