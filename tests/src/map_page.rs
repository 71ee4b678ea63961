//! The service map's page and its cluster source as the tests use them: `eddy-agent map` over
//! a Prometheus, JSON from `/api/map`, and the page rendered by a headless Chromium (Debian
//! package) with its DOM and a screenshot kept under `target/test-artifacts`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::prometheus::tool;
use crate::{agent, agent_bin, http_get, netns, poll_until};

/// `eddy-agent map`, killed on drop.
pub struct MapServer {
    child: Child,
    pub addr: SocketAddr,
}

impl MapServer {
    pub fn start(prometheus: SocketAddr) -> MapServer {
        MapServer::start_with(prometheus, &[])
    }

    /// With extra arguments (e.g. prices).
    pub fn start_with(prometheus: SocketAddr, extra: &[&str]) -> MapServer {
        let addr = SocketAddr::from(([127, 0, 0, 1], agent::free_loopback_port()));
        let child = Command::new(agent_bin())
            .args(["map", "--prometheus", &format!("http://{prometheus}"), "--listen", &addr.to_string()])
            .args(extra)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::null())
            .spawn()
            .expect("eddy-agent map");
        let s = MapServer { child, addr };
        poll_until(Duration::from_secs(10), Duration::from_millis(100), "eddy-agent map answering", || {
            match http_get(s.addr, "/healthz", Duration::from_secs(2)) {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("status {}", r.status)),
                Err(e) => Err(e.to_string()),
            }
        });
        s
    }
}

impl Drop for MapServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `path` of `addr` as JSON (`Err` unless 200).
pub fn get_json(addr: SocketAddr, path: &str) -> Result<Value, String> {
    let r = http_get(addr, path, Duration::from_secs(20)).map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!("{path}: {} {}", r.status, r.text()));
    }
    serde_json::from_str(&r.text()).map_err(|e| format!("{path}: {e}"))
}

/// Debian's Chromium, if installed.
pub fn chromium() -> Option<PathBuf> {
    tool("chromium").or_else(|| tool("chromium-browser"))
}

/// The page's DOM after its script ran, and a screenshot kept under target/test-artifacts.
pub fn render(url: &str, shot: &str) -> String {
    let bin = chromium().expect("chromium");
    let profile =
        std::env::temp_dir().join(format!("eddy-chromium-{}-{}", std::process::id(), netns::next_id()));
    let common = |c: &mut Command| {
        c.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=8000",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .stderr(Stdio::null());
    };
    let mut dump = Command::new(&bin);
    common(&mut dump);
    let out = dump.arg("--dump-dom").arg(url).output().expect("chromium --dump-dom");
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    let _ = std::fs::create_dir_all(&artifacts);
    let mut shoot = Command::new(&bin);
    common(&mut shoot);
    let _ = shoot.arg(format!("--screenshot={}", artifacts.join(shot).display())).arg(url).output();
    let _ = std::fs::remove_dir_all(&profile);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `attr` on the element that carries `marker` (an attribute with its value).
pub fn attr_of(dom: &str, marker: &str, attr: &str) -> Option<String> {
    let at = dom.find(marker)?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let tag = &dom[start..end];
    let from = tag.find(&format!("{attr}=\""))? + attr.len() + 2;
    Some(tag[from..from + tag[from..].find('"')?].to_string())
}
