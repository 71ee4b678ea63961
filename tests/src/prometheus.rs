//! A real Prometheus server (Debian's `prometheus` package) on loopback for the tests: scrapes
//! the given targets every second; its query API answers instant queries.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{agent, http_get, netns, poll_until};

/// A tool's path in the usual bin directories.
pub fn tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/local/bin", "/bin"].iter().map(|d| PathBuf::from(d).join(name)).find(|p| p.exists())
}

/// A Prometheus server on loopback scraping one target every second; killed on drop.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    pub fn start(bin: &PathBuf, target: SocketAddr) -> Prometheus {
        Prometheus::start_many(bin, &[target])
    }

    /// Scraping every target (each its own `instance`).
    pub fn start_many(bin: &PathBuf, targets: &[SocketAddr]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("eddy-prom-{}-{}", std::process::id(), netns::next_id()));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        let targets = targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: eddy\n    \
                 static_configs:\n      - targets: [{targets}]\n"
            ),
        )
        .expect("write prometheus.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], agent::free_loopback_port()));
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { child, addr, dir };
        poll_until(
            Duration::from_secs(30),
            Duration::from_millis(200),
            "prometheus ready",
            || match http_get(p.addr, "/-/ready", Duration::from_secs(2)) {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("status {}", r.status)),
                Err(e) => Err(e.to_string()),
            },
        );
        p
    }

    /// The single value of an instant query, if any.
    pub fn query(&self, promql: &str) -> Result<f64, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let r = http_get(self.addr, &path, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&r.text()).map_err(|e| e.to_string())?;
        let result = &v["data"]["result"];
        match result.as_array().map(Vec::as_slice) {
            Some([one]) => one["value"][1].as_str().and_then(|s| s.parse().ok()).ok_or(format!("{v}")),
            _ => Err(format!("no single result for {promql}: {v}")),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes everything but unreserved characters.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
