//! Many concurrent, idle TCP connections, held by worker processes (`eddy-loadgen soak-hold`).
//!
//! What: [`Holders::start`] spreads `total` connections over worker processes; each worker joins
//! the soak's network namespace, listens on 127.1.W.1 .. 127.1.W.4 (port [`PORT`]), opens its
//! share of connections to them (client and server ends in the same process), exchanges
//! [`REQUEST_BYTES`]/[`REPLY_BYTES`] on each, prints `ready N`, and holds them until its stdin
//! closes ([`Holders::release`], or the parent dying).
//!
//! Why processes: every connection costs two descriptors and `RLIMIT_NOFILE` cannot be raised
//! past its hard limit without `CAP_SYS_RESOURCE`, so each worker holds at most
//! (hard limit − 100) / 2 connections ([`per_worker`]).
//!
//! Limits: IPv4 loopback of a namespace of our own (nothing leaves it); a worker gives up when more
//! than 1% of its connections fail.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// Port of every worker's listeners.
pub const PORT: u16 = 7000;
/// Bytes a client sends on a held connection when it opens.
pub const REQUEST_BYTES: usize = 100;
/// Bytes the server answers.
pub const REPLY_BYTES: usize = 200;
/// Listener addresses per worker.
const DESTS: u8 = 4;

/// `RLIMIT_NOFILE` as (soft, hard).
pub fn nofile() -> std::io::Result<(u64, u64)> {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct we pass; nothing else is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((l.rlim_cur, l.rlim_max))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (allowed without privileges).
pub fn raise_nofile() -> std::io::Result<()> {
    let (_, hard) = nofile()?;
    let l = libc::rlimit { rlim_cur: hard, rlim_max: hard };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Connections one worker can hold under `RLIMIT_NOFILE` (hard limit).
pub fn per_worker() -> usize {
    let hard = nofile().map_or(1024, |(_, hard)| hard.min(1 << 20));
    let hard = usize::try_from(hard).unwrap_or(1024);
    (hard.saturating_sub(100) / 2).clamp(1, 30_000)
}

fn dest(worker: u8, i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 1, worker, 1 + (i % usize::from(DESTS)) as u8), PORT))
}

/// The worker: `eddy-loadgen soak-hold NETNS_PATH WORKER COUNT` (run by [`Holders::start`]).
pub fn worker_main(netns: &Path, worker: u8, count: usize) -> Result<()> {
    raise_nofile().context("raising RLIMIT_NOFILE to its hard limit")?;
    let ns = std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    // Before any thread exists: every thread created afterwards is in the namespace too.
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
    let listeners: Vec<TcpListener> = (0..usize::from(DESTS))
        .map(|i| TcpListener::bind(dest(worker, i)).with_context(|| format!("binding {}", dest(worker, i))))
        .collect::<Result<_>>()?;
    let server = std::thread::Builder::new()
        .name("hold-accept".into())
        .spawn(move || -> Result<Vec<TcpStream>> {
            let mut held = Vec::with_capacity(count);
            for i in 0..count {
                let (mut s, _) = listeners[i % listeners.len()].accept().context("accept")?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut req = [0u8; REQUEST_BYTES];
                s.read_exact(&mut req).context("reading a request")?;
                s.write_all(&[b's'; REPLY_BYTES]).context("writing a reply")?;
                held.push(s);
            }
            Ok(held)
        })
        .context("spawning the accept thread")?;
    let mut clients = Vec::with_capacity(count);
    let mut errors = 0usize;
    while clients.len() < count {
        let i = clients.len();
        match open_one(dest(worker, i)) {
            Ok(s) => clients.push(s),
            Err(e) => {
                errors += 1;
                if errors > count / 100 + 1 {
                    bail!("{errors} connections failed, last: {e:#}");
                }
            }
        }
    }
    let servers = server.join().map_err(|_| anyhow!("the accept thread panicked"))??;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {} {errors}", clients.len().min(servers.len()))?;
    out.flush()?;
    drop(out);
    // Hold until the parent closes our stdin (or dies).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop((clients, servers));
    Ok(())
}

fn open_one(to: SocketAddr) -> Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).context("connect")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&[b'c'; REQUEST_BYTES]).context("writing a request")?;
    let mut reply = [0u8; REPLY_BYTES];
    s.read_exact(&mut reply).context("reading a reply")?;
    Ok(s)
}

/// The worker processes holding the connections.
pub struct Holders {
    workers: Vec<(Child, Option<ChildStdin>)>,
    /// Worker processes started.
    pub started: usize,
    pub held: usize,
    pub errors: usize,
    pub setup: Duration,
}

impl Holders {
    /// Starts workers (`loadgen soak-hold …`) for `total` connections and waits until all hold theirs.
    pub fn start(loadgen: &Path, netns: &Path, total: usize, timeout: Duration) -> Result<Holders> {
        let per = per_worker();
        let n = total.div_ceil(per);
        if n > 250 {
            bail!("{total} connections need {n} workers of {per}: more than 250");
        }
        let started = Instant::now();
        let mut holders =
            Holders { workers: Vec::new(), started: n, held: 0, errors: 0, setup: Duration::ZERO };
        let mut readers = Vec::new();
        for w in 0..n {
            let count = per.min(total - w * per);
            let mut child = Command::new(loadgen)
                .arg("soak-hold")
                .arg(netns)
                .args([(w + 1).to_string(), count.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {} soak-hold", loadgen.display()))?;
            let stdout = child.stdout.take().ok_or_else(|| anyhow!("no worker stdout"))?;
            let stdin = child.stdin.take();
            holders.workers.push((child, stdin));
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send(line);
            });
            readers.push(rx);
        }
        for (w, rx) in readers.into_iter().enumerate() {
            let left = timeout.saturating_sub(started.elapsed());
            let line =
                rx.recv_timeout(left).map_err(|_| anyhow!("worker {} not ready after {timeout:?}", w + 1))?;
            let mut f = line.split_whitespace();
            match (
                f.next(),
                f.next().and_then(|v| v.parse::<usize>().ok()),
                f.next().and_then(|v| v.parse::<usize>().ok()),
            ) {
                (Some("ready"), Some(held), Some(errors)) => {
                    holders.held += held;
                    holders.errors += errors;
                }
                _ => bail!("worker {} failed (said {line:?}; its stderr has the reason)", w + 1),
            }
        }
        holders.setup = started.elapsed();
        Ok(holders)
    }

    /// Closes every held connection (the workers exit) and waits for the workers.
    pub fn release(&mut self) {
        for (_, stdin) in &mut self.workers {
            drop(stdin.take());
        }
        for (child, _) in &mut self.workers {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !matches!(child.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.workers.clear();
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        self.release();
    }
}
