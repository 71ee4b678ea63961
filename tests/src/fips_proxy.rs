//! The real `eddy-fips-proxy` binary (built with `cargo build -p eddy-fips-proxy`, or the path in
//! `EDDY_FIPS_PROXY_BIN`) as a child process on a free loopback port range, plus helpers to talk
//! to its routes and read its status JSON.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::http::{HttpResponse, http_get, parse_response};

/// Overrides where the proxy binary is.
pub const PROXY_BIN_ENV: &str = "EDDY_FIPS_PROXY_BIN";

/// Whether the proxy binary is built; otherwise prints `SKIP` (it is not a default workspace member, so a
/// plain `cargo build` does not build it) and returns false ([`crate::NO_SKIP_ENV`] makes it a failure).
pub fn proxy_available() -> bool {
    if bin_path().is_file() {
        return true;
    }
    crate::skip(&format!(
        "{} is not built: run `cargo build -p eddy-fips-proxy` (or --workspace), or set {PROXY_BIN_ENV}",
        bin_path().display()
    ));
    false
}

fn bin_path() -> PathBuf {
    match std::env::var_os(PROXY_BIN_ENV) {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            exe.parent().expect("test exe has a parent directory").join("..").join("eddy-fips-proxy")
        }
    }
}

/// The proxy binary next to the test executable's directory (`target/<triple>/debug`).
pub fn proxy_bin() -> PathBuf {
    let path = bin_path();
    assert!(
        path.is_file(),
        "proxy binary {} not found: run `cargo build -p eddy-fips-proxy` first (or set {PROXY_BIN_ENV})",
        path.display()
    );
    path
}

/// A command for the proxy with a clean `EDDY_FIPS_*` environment.
pub fn proxy_command(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(proxy_bin());
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("EDDY_FIPS_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the proxy to completion (for startup refusals).
pub fn proxy_output(args: &[&str], env: &[(&str, String)]) -> Output {
    proxy_command(args, env).stdin(Stdio::null()).output().expect("run eddy-fips-proxy")
}

/// A start of `n + 1` consecutive free loopback ports.
pub fn free_port_range(n: u16) -> u16 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let seed = u64::from(std::process::id()) ^ u64::from(nanos);
    for attempt in 0..200u64 {
        let start = 20000 + ((seed.wrapping_mul(7919).wrapping_add(attempt * 104_729)) % 30000) as u16;
        let held: Vec<_> = (0..=n).map_while(|i| TcpListener::bind(("127.0.0.1", start + i)).ok()).collect();
        if held.len() == usize::from(n) + 1 {
            return start;
        }
    }
    panic!("no {} consecutive free loopback ports found", n + 1);
}

/// A running proxy (killed on drop).
pub struct Proxy {
    pub start: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Proxy {
    /// Starts the proxy with `routes` (`EDDY_FIPS_ROUTES`) and extra environment; waits for the status port.
    pub fn start(routes: &str, extra: &[(&str, String)]) -> Proxy {
        let n = routes.split(';').filter(|r| !r.trim().is_empty()).count().max(1) as u16;
        let start = free_port_range(n);
        let log = std::env::temp_dir().join(format!("eddy-fips-proxy-{start}-{}.log", std::process::id()));
        let file = std::fs::File::create(&log).expect("proxy log");
        let mut env = vec![
            ("EDDY_FIPS_PORT_RANGE_START", start.to_string()),
            ("EDDY_FIPS_LOG_LEVEL", "debug".to_string()),
        ];
        if !routes.is_empty() {
            env.push(("EDDY_FIPS_ROUTES", routes.to_string()));
        }
        env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        let child = proxy_command(&[], &env)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone"))
            .stderr(file)
            .spawn()
            .expect("spawn eddy-fips-proxy");
        let mut proxy = Proxy { start, child: Some(child), log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(proxy.status_addr(), "/healthz", Duration::from_secs(1)).is_err() {
            if let Some(Ok(Some(status))) = proxy.child.as_mut().map(Child::try_wait) {
                panic!("proxy exited with {status} during startup:\n{}", proxy.log());
            }
            assert!(Instant::now() < deadline, "proxy not ready after 20s:\n{}", proxy.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        proxy
    }

    pub fn status_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.start))
    }

    /// Local address of route `i` (0-based).
    pub fn route_addr(&self, i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.start + 1 + i))
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The status JSON.
    pub fn status(&self) -> serde_json::Value {
        let r = http_get(self.status_addr(), "/", Duration::from_secs(5)).expect("GET status");
        assert_eq!(r.status, 200, "status page: {}", r.text());
        serde_json::from_slice(&r.body).expect("status JSON")
    }

    /// The status JSON of route `name`.
    pub fn route_status(&self, name: &str) -> serde_json::Value {
        let s = self.status();
        s["routes"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == name).cloned())
            .unwrap_or_else(|| panic!("route {name} not in status: {s}"))
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "proxy did not exit {timeout:?} after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Sends a raw HTTP/1.1 request to `addr` and reads the whole response.
pub fn request(addr: SocketAddr, raw: &str, timeout: Duration) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(raw.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    parse_response(&out)
}
