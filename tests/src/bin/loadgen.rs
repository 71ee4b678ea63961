//! `eddy-loadgen`: loopback TCP load generator for Eddy's overhead benchmark
//! (`eddy-loadgen bench`, run by `scripts/bench-overhead.sh`; the benchmark itself is
//! `eddy_tests::bench`, the soak `eddy_tests::soak`).
//!
//! What: three client modes, each with its own in-process server threads, so a
//! run needs nothing else and never leaves loopback:
//! - `conn-rate`: connect, send 100 B, receive 200 B, close, in a loop for a
//!   fixed time; reports connections per second.
//! - `throughput`: one connection, the client writes `--write-size` chunks as
//!   fast as it can for a fixed time, the server reads and discards; reports
//!   bytes per second.
//! - `churn`: exactly `--count` short-lived connections (same exchange as
//!   `conn-rate`) as fast as possible, optionally writing each successful
//!   connection's client-side 4-tuple to a file, so that a flow monitor's
//!   records can be matched one by one.
//!
//! How: the exchange servers listen on one port on each of 127.0.0.1 ..
//! 127.0.0.D (`--dests`, default 4); clients spread their connections over
//! them and, with `--sources S` > 1, over source addresses 127.0.0.1 ..
//! 127.0.0.S (bound with `IP_BIND_ADDRESS_NO_PORT`, so the port is still
//! chosen per 4-tuple). The kernel picks ephemeral ports per (source,
//! destination, port), about 28k each with the default `ip_local_port_range`,
//! so S x D pairs keep ports from running out and make 4-tuple reuse within
//! one churn run rare. The server closes first after its reply (the client
//! reads to EOF), so TIME_WAIT sockets sit on the server side and never hold
//! client ephemeral ports.
//!
//! Limits: IPv4 loopback only; every mode stops by itself (`--duration`, or
//! `--max-duration` for `churn`); every socket has 5 s timeouts. I/O errors are
//! counted (`errors` client side, `server_errors` server side, with a few
//! distinct messages in `error_samples`), never fatal. The one JSON summary
//! line goes to stdout; usage errors go to stderr with exit status 2, setup
//! failures (cannot bind, cannot create `--out`) with exit status 1.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect, setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;
use serde::Serialize;

const USAGE: &str = "\
eddy-loadgen: loopback TCP load generator (client and server threads in one process)

USAGE:
    eddy-loadgen conn-rate  [--duration 5s] [--threads 2] [--dests 4] [--sources 1]
    eddy-loadgen throughput [--write-size 1024] [--duration 5s]
    eddy-loadgen churn      [--count 40000] [--threads 2] [--dests 4] [--sources 4]
                            [--out FILE] [--max-duration 120s]
    eddy-loadgen soak       [--duration 10m] [--connections 100000] ... (see `soak --help`)
    eddy-loadgen bench      [--quick] [--rounds N] [--agent PATH] (see `bench --help`)

MODES:
    conn-rate   connect / send 100 B / receive 200 B / close, in a loop for --duration
    throughput  one connection; the client writes --write-size chunks for --duration,
                the server reads and discards
    churn       exactly --count such short connections as fast as possible; with --out,
                writes one line per successful connection:
                `CLIENT_ADDR:PORT SERVER_ADDR:PORT`

OPTIONS:
    --duration D       run time: 5s, 500ms, 2m or plain seconds (default 5s)
    --threads N        client threads (default 2)
    --dests N          server addresses 127.0.0.1 .. 127.0.0.N, one port (default 4)
    --sources N        client source addresses 127.0.0.1 .. 127.0.0.N; 1 = let the
                       kernel choose (default 1 for conn-rate, 4 for churn)
    --write-size N     bytes per write in throughput mode (default 1024)
    --count N          connections in churn mode (default 40000)
    --out FILE         churn: where to write the client-side 4-tuples
    --max-duration D   churn: stop early after this long (default 120s)
    -h, --help         this text

Prints one JSON object on stdout, for example
    {\"mode\":\"conn-rate\",\"connections\":N,\"seconds\":S,\"per_second\":R,\"errors\":E,...}
";

/// Bytes the client sends in one exchange.
const REQUEST_BYTES: usize = 100;
/// Bytes the server answers in one exchange.
const REPLY_BYTES: usize = 200;
/// Per-socket connect/read/write timeout.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How many distinct error messages to keep per run.
const MAX_ERROR_SAMPLES: usize = 8;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    }
    // The soak and the benchmark have their own options and modules (eddy_tests::soak, ::bench).
    match args[0].as_str() {
        "soak" => return eddy_tests::soak::cli::soak_main(&args[1..]),
        "bench" => return eddy_tests::bench::bench_main(&args[1..]),
        "soak-hold" => return eddy_tests::soak::cli::hold_main(&args[1..]),
        _ => {}
    }
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let opts = match Options::parse(&args) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("eddy-loadgen: {e:#}\n(run `eddy-loadgen --help` for usage)");
            return ExitCode::from(2);
        }
    };
    let result = match opts.mode {
        Mode::ConnRate => conn_rate(&opts),
        Mode::Throughput => throughput(&opts),
        Mode::Churn => churn(&opts),
    };
    match result {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("eddy-loadgen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// Options

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    ConnRate,
    Throughput,
    Churn,
}

#[derive(Debug)]
struct Options {
    mode: Mode,
    duration: Duration,
    threads: usize,
    dests: u8,
    sources: u8,
    write_size: usize,
    count: u64,
    out: Option<String>,
    max_duration: Duration,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let (mode_arg, rest) = args.split_first().ok_or_else(|| anyhow!("missing mode"))?;
        let mode = match mode_arg.as_str() {
            "conn-rate" => Mode::ConnRate,
            "throughput" => Mode::Throughput,
            "churn" => Mode::Churn,
            other => bail!("unknown mode `{other}` (expected conn-rate, throughput or churn)"),
        };
        let allowed: &[&str] = match mode {
            Mode::ConnRate => &["--duration", "--threads", "--dests", "--sources"],
            Mode::Throughput => &["--duration", "--write-size"],
            Mode::Churn => &["--count", "--threads", "--dests", "--sources", "--out", "--max-duration"],
        };
        let mut opts = Options {
            mode,
            duration: Duration::from_secs(5),
            threads: 2,
            dests: 4,
            sources: if mode == Mode::Churn { 4 } else { 1 },
            write_size: 1024,
            count: 40_000,
            out: None,
            max_duration: Duration::from_secs(120),
        };
        let mut it = rest.iter();
        while let Some(flag) = it.next() {
            // Accept both `--flag value` and `--flag=value`.
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
                _ => (flag.as_str(), None),
            };
            if !allowed.contains(&name) {
                bail!("unknown option `{name}` for {mode_arg} (allowed: {})", allowed.join(", "));
            }
            let value = match inline {
                Some(v) => v,
                None => it.next().cloned().ok_or_else(|| anyhow!("option `{name}` needs a value"))?,
            };
            match name {
                "--duration" => opts.duration = parse_duration(name, &value)?,
                "--max-duration" => opts.max_duration = parse_duration(name, &value)?,
                "--threads" => opts.threads = parse_num(name, &value, 1, 256)?,
                "--dests" => opts.dests = parse_num(name, &value, 1, 254)?,
                "--sources" => opts.sources = parse_num(name, &value, 1, 254)?,
                "--write-size" => opts.write_size = parse_num(name, &value, 1, 64 << 20)?,
                "--count" => opts.count = parse_num(name, &value, 1, 100_000_000)?,
                "--out" => opts.out = Some(value),
                _ => bail!("option `{name}` is not handled"),
            }
        }
        Ok(opts)
    }
}

fn parse_num<T>(name: &str, value: &str, min: T, max: T) -> Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let v: T =
        value.trim().replace('_', "").parse().map_err(|_| anyhow!("{name}: `{value}` is not a number"))?;
    if v < min || v > max {
        bail!("{name}: {v} is out of range ({min} to {max})");
    }
    Ok(v)
}

/// `5s`, `500ms`, `1.5s`, `2m`, `5` (seconds); more than 0, at most 24 h.
fn parse_duration(name: &str, value: &str) -> Result<Duration> {
    let v = value.trim();
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60.0)
    } else {
        (v, 1.0)
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| anyhow!("{name}: `{value}` is not a duration (examples: 5s, 500ms, 2m)"))?;
    let secs = n * scale;
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        bail!("{name}: `{value}` is out of range (more than 0, at most 24h)");
    }
    Ok(Duration::from_secs_f64(secs))
}

// ---------------------------------------------------------------------------
// Summaries (field order is the output order)

#[derive(Serialize)]
struct ConnRateSummary {
    mode: &'static str,
    connections: u64,
    seconds: f64,
    per_second: f64,
    errors: u64,
    server_errors: u64,
    threads: usize,
    dests: u8,
    sources: u8,
    error_samples: Vec<String>,
}

#[derive(Serialize)]
struct ChurnSummary {
    mode: &'static str,
    connections: u64,
    seconds: f64,
    per_second: f64,
    errors: u64,
    server_errors: u64,
    requested: u64,
    /// `--max-duration` ran out before `--count` connections were attempted.
    truncated: bool,
    /// Client 4-tuples that occur more than once (the kernel reused a port).
    repeated_tuples: u64,
    threads: usize,
    dests: u8,
    sources: u8,
    out: Option<String>,
    error_samples: Vec<String>,
}

#[derive(Serialize)]
struct ThroughputSummary {
    mode: &'static str,
    write_size: usize,
    /// Bytes the server read (delivered).
    bytes: u64,
    seconds: f64,
    bytes_per_second: f64,
    bytes_written: u64,
    errors: u64,
    server_errors: u64,
    error_samples: Vec<String>,
}

fn to_json<T: Serialize>(summary: &T) -> Result<String> {
    serde_json::to_string(summary).context("encoding the summary")
}

/// Error counter plus a few distinct messages for the summary.
#[derive(Default)]
struct Errors {
    count: AtomicU64,
    samples: Mutex<BTreeSet<String>>,
}

impl Errors {
    fn record(&self, what: &str, e: &io::Error) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.samples.lock()
            && s.len() < MAX_ERROR_SAMPLES
        {
            s.insert(format!("{what}: {e}"));
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn samples(&self) -> Vec<String> {
        self.samples.lock().map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn rate(n: f64, secs: f64) -> f64 {
    if secs > 0.0 { round3(n / secs) } else { 0.0 }
}

fn loopback(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, host)
}

// ---------------------------------------------------------------------------
// Exchange servers and clients (conn-rate, churn)

/// Listeners on 127.0.0.1 .. 127.0.0.N, all on the same port.
fn bind_exchange_listeners(dests: u8) -> Result<Vec<TcpListener>> {
    let mut last_err = anyhow!("could not bind the listeners");
    for _attempt in 0..50 {
        let first = TcpListener::bind(SocketAddrV4::new(loopback(1), 0))
            .context("binding a listener on 127.0.0.1")?;
        let port = first.local_addr().context("listener address")?.port();
        let mut listeners = vec![first];
        for i in 2..=dests {
            match TcpListener::bind(SocketAddrV4::new(loopback(i), port)) {
                Ok(l) => listeners.push(l),
                Err(e) => {
                    // That port is taken on another loopback address: try another.
                    last_err = anyhow!("binding 127.0.0.{i}:{port}: {e}");
                    break;
                }
            }
        }
        if listeners.len() == usize::from(dests) {
            return Ok(listeners);
        }
    }
    Err(last_err.context("no port is free on all the loopback destination addresses"))
}

/// Start `workers` accept loops per listener; each serves one exchange at a
/// time: read 100 B, write 200 B, close (the server closes first). The threads
/// live until the process exits.
fn spawn_exchange_servers(
    listeners: Vec<TcpListener>,
    workers: usize,
    errors: &Arc<Errors>,
) -> Result<Vec<SocketAddr>> {
    let mut addrs = Vec::new();
    for listener in listeners {
        addrs.push(listener.local_addr().context("listener address")?);
        let listener = Arc::new(listener);
        for _ in 0..workers {
            let listener = Arc::clone(&listener);
            let errors = Arc::clone(errors);
            thread::Builder::new()
                .name("exchange-server".into())
                .spawn(move || {
                    loop {
                        match listener.accept() {
                            Ok((stream, _)) => {
                                if let Err(e) = serve_exchange(stream) {
                                    errors.record("server exchange", &e);
                                }
                            }
                            Err(e) => {
                                errors.record("accept", &e);
                                // EMFILE and friends: don't spin.
                                thread::sleep(Duration::from_millis(10));
                            }
                        }
                    }
                })
                .context("spawning a server thread")?;
        }
    }
    Ok(addrs)
}

fn serve_exchange(mut stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut req = [0u8; REQUEST_BYTES];
    stream.read_exact(&mut req)?;
    stream.write_all(&[b's'; REPLY_BYTES])?;
    // Dropping the stream closes it: the server closes first.
    Ok(())
}

/// Blocking connect with a timeout (Linux applies SO_SNDTIMEO to a blocking
/// connect), without the extra non-blocking/poll round of
/// `TcpStream::connect_timeout`. With `src`, binds that source address first
/// and leaves the port to connect().
fn connect_with_timeout(dst: SocketAddr, src: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    let tv = TimeVal::new(IO_TIMEOUT.as_secs().try_into().unwrap_or(5), 0);
    setsockopt(&fd, sockopt::SendTimeout, &tv)?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &tv)?;
    if let Some(src) = src {
        setsockopt(&fd, sockopt::IpBindAddressNoPort, &true)?;
        bind(fd.as_raw_fd(), &SockaddrStorage::from(SocketAddr::from((src, 0))))?;
    }
    let sa = SockaddrStorage::from(dst);
    loop {
        match connect(fd.as_raw_fd(), &sa) {
            Ok(()) => break,
            Err(Errno::EINTR) => continue,
            Err(Errno::EINPROGRESS) | Err(Errno::EAGAIN) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(TcpStream::from(fd))
}

/// One client exchange; returns the client's local address when `want_local`.
fn client_exchange(
    dst: SocketAddr,
    src: Option<Ipv4Addr>,
    want_local: bool,
) -> Result<Option<SocketAddr>, (&'static str, io::Error)> {
    let mut stream = connect_with_timeout(dst, src).map_err(|e| ("connect", e))?;
    let local = if want_local { Some(stream.local_addr().map_err(|e| ("getsockname", e))?) } else { None };
    stream.write_all(&[b'c'; REQUEST_BYTES]).map_err(|e| ("send request", e))?;
    // Read to EOF: the server closes after its reply.
    let mut buf = [0u8; REPLY_BYTES + 1];
    let mut got = 0usize;
    loop {
        match stream.read(&mut buf[got.min(REPLY_BYTES)..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(("read reply", e)),
        }
    }
    if got != REPLY_BYTES {
        return Err((
            "read reply",
            io::Error::new(io::ErrorKind::UnexpectedEof, format!("got {got} bytes, expected {REPLY_BYTES}")),
        ));
    }
    Ok(local)
}

/// When an exchange run stops.
#[derive(Clone, Copy)]
enum Limit {
    /// Loop until this much time has passed.
    Time(Duration),
    /// Attempt exactly this many connections, unless the deadline passes first.
    Count(u64, Duration),
}

struct ExchangeOutcome {
    connections: u64,
    seconds: f64,
    errors: Arc<Errors>,
    server_errors: Arc<Errors>,
    truncated: bool,
    tuples: Vec<(SocketAddr, SocketAddr)>,
}

/// Servers plus `opts.threads` client threads; attempt `i` (counted across
/// threads) goes to destination `i % D` from source `(i / D) % S`.
fn run_exchanges(opts: &Options, limit: Limit, want_local: bool) -> Result<ExchangeOutcome> {
    let server_errors = Arc::new(Errors::default());
    let listeners = bind_exchange_listeners(opts.dests)?;
    let dests = spawn_exchange_servers(listeners, opts.threads.max(2), &server_errors)?;
    let dests = Arc::new(dests);
    let sources: Arc<Vec<Option<Ipv4Addr>>> = Arc::new(if opts.sources <= 1 {
        vec![None]
    } else {
        (1..=opts.sources).map(|h| Some(loopback(h))).collect()
    });
    let errors = Arc::new(Errors::default());
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let truncated = Arc::new(AtomicBool::new(false));
    let (count, deadline) = match limit {
        Limit::Time(_) => (u64::MAX, None),
        Limit::Count(n, max) => (n, Some(Instant::now() + max)),
    };

    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..opts.threads {
        let (dests, sources, errors, next, stop, truncated) = (
            Arc::clone(&dests),
            Arc::clone(&sources),
            Arc::clone(&errors),
            Arc::clone(&next),
            Arc::clone(&stop),
            Arc::clone(&truncated),
        );
        let handle = thread::Builder::new()
            .name(format!("client-{t}"))
            .spawn(move || {
                let mut ok = 0u64;
                let mut tuples = Vec::new();
                let (nd, ns) = (dests.len() as u64, sources.len() as u64);
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    if let Some(deadline) = deadline
                        && i.is_multiple_of(64)
                        && Instant::now() >= deadline
                    {
                        truncated.store(true, Ordering::Relaxed);
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    let dst = dests[(i % nd) as usize];
                    let src = sources[((i / nd) % ns) as usize];
                    match client_exchange(dst, src, want_local) {
                        Ok(local) => {
                            ok += 1;
                            if let Some(local) = local {
                                tuples.push((local, dst));
                            }
                        }
                        Err((what, e)) => errors.record(what, &e),
                    }
                }
                (ok, tuples)
            })
            .context("spawning a client thread")?;
        handles.push(handle);
    }
    if let Limit::Time(duration) = limit {
        thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
    }
    let mut connections = 0u64;
    let mut tuples = Vec::new();
    for h in handles {
        let (ok, t) = h.join().map_err(|_| anyhow!("a client thread panicked"))?;
        connections += ok;
        tuples.extend(t);
    }
    Ok(ExchangeOutcome {
        connections,
        seconds: start.elapsed().as_secs_f64(),
        errors,
        server_errors,
        truncated: truncated.load(Ordering::Relaxed),
        tuples,
    })
}

fn all_samples(a: &Errors, b: &Errors) -> Vec<String> {
    let mut samples = a.samples();
    samples.extend(b.samples());
    samples
}

fn conn_rate(opts: &Options) -> Result<String> {
    let o = run_exchanges(opts, Limit::Time(opts.duration), false)?;
    to_json(&ConnRateSummary {
        mode: "conn-rate",
        connections: o.connections,
        seconds: round3(o.seconds),
        per_second: rate(o.connections as f64, o.seconds),
        errors: o.errors.count(),
        server_errors: o.server_errors.count(),
        threads: opts.threads,
        dests: opts.dests,
        sources: opts.sources,
        error_samples: all_samples(&o.errors, &o.server_errors),
    })
}

fn churn(opts: &Options) -> Result<String> {
    // Create the output file first: a bad path fails before the run.
    let out = match &opts.out {
        Some(path) => Some((path, File::create(path).with_context(|| format!("creating {path}"))?)),
        None => None,
    };
    let limit = Limit::Count(opts.count, opts.max_duration);
    let o = run_exchanges(opts, limit, out.is_some())?;
    if let Some((path, file)) = out {
        let mut w = BufWriter::new(file);
        for (local, remote) in &o.tuples {
            writeln!(w, "{local} {remote}").with_context(|| format!("writing {path}"))?;
        }
        w.flush().with_context(|| format!("writing {path}"))?;
    }
    let mut seen = std::collections::HashSet::with_capacity(o.tuples.len());
    let repeated_tuples = o.tuples.iter().filter(|t| !seen.insert(*t)).count() as u64;
    to_json(&ChurnSummary {
        mode: "churn",
        connections: o.connections,
        seconds: round3(o.seconds),
        per_second: rate(o.connections as f64, o.seconds),
        errors: o.errors.count(),
        server_errors: o.server_errors.count(),
        requested: opts.count,
        truncated: o.truncated,
        repeated_tuples,
        threads: opts.threads,
        dests: opts.dests,
        sources: opts.sources,
        out: opts.out.clone(),
        error_samples: all_samples(&o.errors, &o.server_errors),
    })
}

// ---------------------------------------------------------------------------
// Throughput

fn throughput(opts: &Options) -> Result<String> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .context("binding the throughput listener on 127.0.0.1")?;
    let addr = listener.local_addr().context("listener address")?;
    let server_errors = Arc::new(Errors::default());
    let server = {
        let server_errors = Arc::clone(&server_errors);
        thread::Builder::new()
            .name("sink".into())
            .spawn(move || -> u64 {
                let (mut stream, _) = match listener.accept() {
                    Ok(s) => s,
                    Err(e) => {
                        server_errors.record("accept", &e);
                        return 0;
                    }
                };
                if let Err(e) = stream.set_read_timeout(Some(IO_TIMEOUT)) {
                    server_errors.record("set read timeout", &e);
                }
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            server_errors.record("sink read", &e);
                            break;
                        }
                    }
                }
                total
            })
            .context("spawning the sink thread")?
    };

    let errors = Errors::default();
    let chunk = vec![b'x'; opts.write_size];
    let mut written = 0u64;
    let start = Instant::now();
    match connect_with_timeout(addr, None) {
        Ok(mut stream) => {
            let mut writes = 0u32;
            loop {
                match stream.write(&chunk) {
                    Ok(n) => written += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        errors.record("write", &e);
                        break;
                    }
                }
                writes = writes.wrapping_add(1);
                if writes.is_multiple_of(16) && start.elapsed() >= opts.duration {
                    break;
                }
            }
            if let Err(e) = stream.shutdown(Shutdown::Write) {
                errors.record("shutdown", &e);
            }
        }
        Err(e) => {
            errors.record("connect", &e);
            // Unblock the sink's accept so that the join below returns.
            if let Err(e) = TcpStream::connect(addr) {
                errors.record("connect", &e);
            }
        }
    }
    let received = server.join().map_err(|_| anyhow!("the sink thread panicked"))?;
    // Until the sink has read everything: the rate is of delivered bytes.
    let secs = start.elapsed().as_secs_f64();
    to_json(&ThroughputSummary {
        mode: "throughput",
        write_size: opts.write_size,
        bytes: received,
        seconds: round3(secs),
        bytes_per_second: rate(received as f64, secs),
        bytes_written: written,
        errors: errors.count(),
        server_errors: server_errors.count(),
        error_samples: all_samples(&errors, &server_errors),
    })
}
