//! DNS: a hand-written responder on 127.0.0.1:53 (UDP) answers `A ok.test` with NOERROR and one
//! address, every other name with NXDOMAIN. The driver asks 3× `ok.test` and 2× `nx.test` (type A), each
//! from a fresh socket; `/dns` must hold exactly these counts for server 127.0.0.1, and nothing else.
//! Then 2× `tcp.test` over TCP (a connection each, the length-prefixed message in one write): 2 queries
//! and 2 NXDOMAIN where the agent's `dns` hook says it copies TCP, no row where it says "UDP only".

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::scenario::{Ctx, Outcome};

const SERVER: &str = "127.0.0.1:53";
const ANSWER: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 9);

/// A query for `name`, type A, class IN, recursion desired.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend(label.as_bytes());
    }
    m.extend([0, 0, 1, 0, 1]);
    m
}

/// The question name of a query and where the question ends, or `None` when it is not one.
fn question(msg: &[u8]) -> Option<(String, usize)> {
    if msg.len() < 12 || msg[2] & 0x80 != 0 || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    let mut labels = Vec::new();
    let mut i = 12;
    loop {
        let len = usize::from(*msg.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(msg.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    // QTYPE and QCLASS.
    msg.get(i..i + 4)?;
    Some((labels.join("."), i + 4))
}

/// The response to `msg`: `ok.test` → NOERROR + A 10.9.9.9, anything else → NXDOMAIN.
fn respond(msg: &[u8]) -> Option<Vec<u8>> {
    let (name, end) = question(msg)?;
    let ok = name == "ok.test";
    let mut r = msg[..end].to_vec();
    r[2] = 0x80 | 0x04 | (msg[2] & 0x01); // QR, AA, RD copied
    r[3] = 0x80 | if ok { 0 } else { 3 }; // RA, rcode
    r[6..12].copy_from_slice(&[0, u8::from(ok), 0, 0, 0, 0]);
    if ok {
        r.extend([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        r.extend(ANSWER.octets());
    }
    Some(r)
}

/// Serves until `stop` is set (or for 60 s at most).
fn responder(socket: UdpSocket, stop: Arc<AtomicBool>) {
    socket.set_read_timeout(Some(Duration::from_millis(200))).expect("read timeout");
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        if let Ok((n, peer)) = socket.recv_from(&mut buf)
            && let Some(r) = respond(&buf[..n])
        {
            let _ = socket.send_to(&r, peer);
        }
    }
}

/// Serves DNS over TCP (one message per connection) until `stop` is set (or for 60 s at most).
fn tcp_responder(listener: TcpListener, stop: Arc<AtomicBool>) {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let Ok((mut c, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let _ = c.set_nonblocking(false);
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        let mut len = [0u8; 2];
        if c.read_exact(&mut len).is_err() {
            continue;
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if c.read_exact(&mut msg).is_err() {
            continue;
        }
        if let Some(r) = respond(&msg) {
            let mut out = (r.len() as u16).to_be_bytes().to_vec();
            out.extend(r);
            let _ = c.write_all(&out);
        }
    }
}

/// Asks `name` over TCP (a fresh connection); the response's rcode.
fn ask_tcp(server: SocketAddr, id: u16, name: &str) -> Result<u8, String> {
    let mut c =
        TcpStream::connect_timeout(&server, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let q = query(id, name);
    let mut out = (q.len() as u16).to_be_bytes().to_vec();
    out.extend(q);
    c.write_all(&out).map_err(|e| format!("send: {e}"))?;
    let mut len = [0u8; 2];
    c.read_exact(&mut len).map_err(|e| format!("{name}: no response: {e}"))?;
    let mut r = vec![0u8; usize::from(u16::from_be_bytes(len))];
    c.read_exact(&mut r).map_err(|e| format!("{name}: short response: {e}"))?;
    if r.len() < 12 || r[..2] != id.to_be_bytes() || r[2] & 0x80 == 0 {
        return Err(format!("{name}: not a response to id {id}: {r:?}"));
    }
    Ok(r[3] & 0x0f)
}

/// Asks `name` from a fresh socket; the response's rcode.
fn ask(server: SocketAddr, id: u16, name: &str) -> Result<u8, String> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    s.send_to(&query(id, name), server).map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf).map_err(|e| format!("{name}: no response: {e}"))?;
    let r = &buf[..n];
    if n < 12 || r[..2] != id.to_be_bytes() || r[2] & 0x80 == 0 {
        return Err(format!("{name}: not a response to id {id}: {r:?}"));
    }
    Ok(r[3] & 0x0f)
}

/// Sum of `field` (or `rcodes[rcode]`) over the rows of (name, A).
fn count(rows: &[Value], name: &str, field: &str) -> u64 {
    rows.iter()
        .filter(|r| r["name"] == name && r["qtype"] == "A")
        .map(|r| match field.strip_prefix("rcode:") {
            Some(code) => r["rcodes"][code].as_u64().unwrap_or(0),
            None => r[field].as_u64().unwrap_or(0),
        })
        .sum()
}

pub fn scenario(ctx: &Ctx) -> Outcome {
    if let Some(why) = ctx.unavailable("dns") {
        return Outcome::fail(why, json!({}));
    }
    let server: SocketAddr = SERVER.parse().expect("address");
    let socket = UdpSocket::bind(server).unwrap_or_else(|e| panic!("bind {server}: {e}"));
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = Arc::clone(&stop);
    let serving = std::thread::spawn(move || responder(socket, stopper));
    let listener = TcpListener::bind(server).unwrap_or_else(|e| panic!("bind tcp {server}: {e}"));
    let stopper = Arc::clone(&stop);
    let serving_tcp = std::thread::spawn(move || tcp_responder(listener, stopper));
    // Whether the agent copies DNS over TCP: its `dns` hook names TCP, or says "UDP only".
    let tcp_copied = ctx.chosen("dns").contains("TCP");
    let plan = [
        ("ok.test", 0u8, false),
        ("ok.test", 0, false),
        ("ok.test", 0, false),
        ("nx.test", 3, false),
        ("nx.test", 3, false),
        ("tcp.test", 3, true),
        ("tcp.test", 3, true),
    ];
    for (i, (name, want, tcp)) in plan.iter().enumerate() {
        let id = 0x4500 + i as u16;
        match if *tcp { ask_tcp(server, id, name) } else { ask(server, id, name) } {
            Ok(rcode) if rcode == *want => {}
            Ok(rcode) => {
                return Outcome::fail(format!("the responder answered {name} with rcode {rcode}"), json!({}));
            }
            Err(e) => return Outcome::fail(format!("the responder did not answer: {e}"), json!({})),
        }
    }
    let tcp_n = if tcp_copied { 2 } else { 0 };
    let checks = [
        ("ok.test", "queries", 3),
        ("ok.test", "rcode:NOERROR", 3),
        ("ok.test", "timeouts", 0),
        ("nx.test", "queries", 2),
        ("nx.test", "rcode:NXDOMAIN", 2),
        ("nx.test", "timeouts", 0),
        ("tcp.test", "queries", tcp_n),
        ("tcp.test", "rcode:NXDOMAIN", tcp_n),
        ("tcp.test", "timeouts", 0),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let (rows, problems) = loop {
        let (rows, problems) = match ctx.agent.get_json("/dns") {
            Ok(all) => {
                let rows: Vec<Value> = all
                    .as_array()
                    .map(|a| a.iter().filter(|r| r["server"] == "127.0.0.1").cloned().collect())
                    .unwrap_or_default();
                let mut problems: Vec<String> = checks
                    .iter()
                    .filter(|(name, field, n)| count(&rows, name, field) != *n)
                    .map(|(name, field, n)| {
                        format!("{name} A {field} = {}, expected {n}", count(&rows, name, field))
                    })
                    .collect();
                let others: Vec<&Value> = rows
                    .iter()
                    .filter(|r| {
                        let named =
                            r["name"] == "ok.test" || r["name"] == "nx.test" || r["name"] == "tcp.test";
                        !named || r["qtype"] != "A"
                    })
                    .collect();
                if !others.is_empty() {
                    problems.push(format!("unexpected rows for server 127.0.0.1: {others:?}"));
                }
                (rows, problems)
            }
            Err(e) => (Vec::new(), vec![e]),
        };
        if problems.is_empty() || Instant::now() >= deadline {
            break (rows, problems);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    stop.store(true, Ordering::SeqCst);
    let _ = serving.join();
    let _ = serving_tcp.join();
    let dns_status = ctx.agent.get_json("/status").map(|s| s["dns"].clone()).unwrap_or(Value::Null);
    let data = json!({"rows": rows, "status_dns": dns_status, "tcp_copied": tcp_copied});
    if problems.is_empty() {
        let tcp = if tcp_copied {
            "tcp.test A 2 queries 2 NXDOMAIN over TCP"
        } else {
            "no row over TCP (UDP only)"
        };
        Outcome::pass(
            format!(
                "/dns for 127.0.0.1: ok.test A 3 queries 3 NOERROR, nx.test A 2 queries 2 NXDOMAIN, {tcp}, no timeout"
            ),
            data,
        )
    } else {
        Outcome::fail(format!("after 10 s: {}", problems.join("; ")), data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responder_answers_ok_and_nxdomain() {
        let r = respond(&query(7, "ok.test")).expect("response");
        assert_eq!((r[0], r[1], r[2] & 0x80, r[3] & 0x0f, r[7]), (0, 7, 0x80, 0, 1));
        assert_eq!(&r[r.len() - 4..], &[10, 9, 9, 9]);
        let r = respond(&query(8, "NX.test")).expect("response");
        assert_eq!((r[3] & 0x0f, r[7]), (3, 0));
        assert!(respond(&r).is_none(), "a response is not answered");
    }
}
