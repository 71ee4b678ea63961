//! `tcp_owner`: the process of both ends of a connection while other calls block in `tcp_recvmsg()`
//! and `tcp_sendmsg()`.
//!
//! Per-call kprobe hooks (5.10) learn the owner in the caller's context, but their kretprobes have
//! few instances (one per CPU on kernels without CONFIG_PREEMPTION), held from entry to return: with
//! readers waiting for data and writers waiting for buffer space, every other call returns unseen. So
//! blocked calls are set up first (readers on idle connections, writers into peers that do not read),
//! then one connection exchanges known bytes: its records must name this process on both ends and
//! carry exact bytes, live (after one more call on each end, which the entry sees) and closed.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use eddy_tests::FlowRecord;
use serde_json::json;

use crate::flows::{Want, await_records, summaries};
use crate::scenario::{Ctx, Outcome};
use crate::tcp::{BYTES_AT_CLOSE, Exchanged, close_both};

/// Calls kept blocked in each direction: more than the instances of a kretprobe on the matrix's
/// 2-CPU guests.
const BLOCKED: usize = 3;
const UP: usize = 3_456;
const DOWN: usize = 6_543;

/// Connections whose calls block until [`Blockers::release`].
struct Blockers {
    /// The ends that neither read nor write (dropped to release the others).
    idle: Vec<TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

impl Blockers {
    fn start(listener: &TcpListener) -> Result<Blockers, String> {
        let mut idle = Vec::new();
        let mut threads = Vec::new();
        for i in 0..2 * BLOCKED {
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            let c = TcpStream::connect(addr).map_err(|e| format!("blocker {i}: connect {addr}: {e}"))?;
            let (s, _) = listener.accept().map_err(|e| format!("blocker {i}: accept: {e}"))?;
            for t in [&c, &s] {
                t.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
                t.set_write_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
            }
            let reader = i < BLOCKED;
            let mut c = c;
            threads.push(std::thread::spawn(move || {
                // Errors end the call: the peer is dropped (reset) to release it.
                if reader {
                    let mut buf = [0u8; 4096];
                    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                } else {
                    // Until the buffers are full and the call waits for space (a few MiB).
                    let chunk = [7u8; 64 * 1024];
                    while c.write_all(&chunk).is_ok() {}
                }
            }));
            idle.push(s);
        }
        Ok(Blockers { idle, threads })
    }

    fn release(self) {
        for s in &self.idle {
            let _ = s.shutdown(Shutdown::Both);
        }
        drop(self.idle);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The problems of `records`' pids, for the records found for `wants` (by cookie).
fn pid_problems(records: &[FlowRecord], wants: &[Want], pid: u32) -> Vec<String> {
    wants
        .iter()
        .filter_map(|w| match w.find(records) {
            Ok(r) if r.pid == Some(pid) => None,
            Ok(r) => Some(format!("{} pid {:?} (comm {:?}), expected {pid}", w.side, r.pid, r.comm)),
            Err(e) => Some(format!("{}: {e}", w.side)),
        })
        .collect()
}

/// Polls `/flows` until both records name `pid`.
fn await_pids(ctx: &Ctx, wants: &[Want], pid: u32, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let problems = match ctx.agent.flows() {
            Ok(records) => pid_problems(&records, wants, pid),
            Err(e) => vec![e],
        };
        if problems.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(problems.join("; "));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub fn scenario(ctx: &Ctx) -> Outcome {
    let pid = std::process::id();
    let bytes_hook = ctx.chosen("tcp_bytes");
    // With the counters read at close only, no program runs in the passive end's process.
    let owner_known = bytes_hook != BYTES_AT_CLOSE;
    let blockers_at: SocketAddr = "127.0.2.9:20009".parse().expect("address");
    let server: SocketAddr = "127.0.2.10:20010".parse().expect("address");
    let mut data = json!({"tcp_bytes_hook": bytes_hook, "pid": pid, "blocked_readers": BLOCKED,
                          "blocked_writers": BLOCKED, "owner_checked": owner_known});
    let blocker_listener = match TcpListener::bind(blockers_at) {
        Ok(l) => l,
        Err(e) => return Outcome::fail(format!("bind {blockers_at}: {e}"), data),
    };
    let blockers = match Blockers::start(&blocker_listener) {
        Ok(b) => b,
        Err(e) => return Outcome::fail(e, data),
    };
    // Let every blocked call reach its wait (TCG guests are slow).
    std::thread::sleep(Duration::from_secs(1));

    let Exchanged { client, srv, local, cookies: (cc, sc) } = Exchanged::open(server, UP, DOWN);
    let mut buf = [0u8; 64];
    // One more call on each end, that finds nothing to read: where the calls above returned unseen,
    // its entry still brings the live counters up to date.
    for s in [&client, &srv] {
        s.set_nonblocking(true).expect("nonblocking");
        let _ = (&*s).read(&mut buf);
        s.set_nonblocking(false).expect("blocking");
    }
    let (up, down) = (UP as u64, DOWN as u64);
    let wants = [
        Want::tcp("client", local, server, (up, down)).cookie(cc),
        Want::tcp("server", server, local, (down, up)).cookie(sc),
    ];
    // Live: exact bytes (0 where they are read at close only) and the owner, from a call or the
    // socket iterator.
    let live_wants: Vec<Want> = wants
        .iter()
        .map(|w| {
            let mut w = w.clone();
            w.closed = Some(false);
            if !owner_known {
                w.alt_bytes = Some((0, 0));
            }
            w
        })
        .collect();
    let t = Instant::now();
    let live = await_records(&ctx.agent, &live_wants, Duration::from_secs(10)).and_then(|records| {
        data["live_records"] = json!(summaries(&records));
        if owner_known { await_pids(ctx, &live_wants, pid, Duration::from_secs(5)) } else { Ok(()) }
    });
    data["live_seconds"] = json!(t.elapsed().as_secs_f64());

    close_both(client, srv);
    let t = Instant::now();
    let closed = await_records(&ctx.agent, &wants, Duration::from_secs(15));
    data["closed_seconds"] = json!(t.elapsed().as_secs_f64());
    let t = Instant::now();
    blockers.release();
    data["release_seconds"] = json!(t.elapsed().as_secs_f64());
    let closed = closed.and_then(|records| {
        data["records"] = json!(summaries(&records));
        let problems = if owner_known { pid_problems(&records, &wants, pid) } else { Vec::new() };
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    });
    match (live, closed) {
        (Ok(()), Ok(())) if owner_known => Outcome::pass(
            format!(
                "{BLOCKED} readers and {BLOCKED} writers blocked: both ends name pid {pid} and carry \
                 exact bytes ({UP}/{DOWN} B), live and closed"
            ),
            data,
        ),
        (Ok(()), Ok(())) => Outcome::pass(
            format!(
                "closed bytes exact ({UP}/{DOWN} B); owner not checked: {bytes_hook:?} runs in no caller"
            ),
            data,
        ),
        (live, closed) => {
            let mut errors = Vec::new();
            if let Err(e) = live {
                errors.push(format!("live, after 10 s: {e}"));
            }
            if let Err(e) = closed {
                errors.push(format!("closed: {e}"));
            }
            Outcome::fail(errors.join("; "), data)
        }
    }
}
