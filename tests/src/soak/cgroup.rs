//! A memory cgroup for the agent under soak, limited as the daemon task definition limits it.
//!
//! What: [`task_memory_limits`] reads the container's `memory` (hard limit, MiB) and
//! `memoryReservation` (soft limit) from a task definition; [`MemoryCgroup`] creates
//! `eddy-soak-<pid>` with those limits, lets a child join it before `exec` ([`MemoryCgroup::procs_path`]),
//! and reads its usage, peak and OOM events.
//!
//! How: cgroup v2 (`memory.max`, `memory.low`, `memory.current`, `memory.peak`, `memory.events`) when
//! the unified hierarchy has the memory controller (`/sys/fs/cgroup` or `/sys/fs/cgroup/unified`);
//! otherwise the v1 memory hierarchy (`memory.limit_in_bytes`, `memory.soft_limit_in_bytes`,
//! `memory.usage_in_bytes`, `memory.max_usage_in_bytes`, `memory.oom_control`), which is what a
//! Docker host with hybrid cgroups applies for `memory` too.
//!
//! Limits: needs root; the cgroup is removed on drop (after its processes exited).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

/// The hard and soft memory limits (bytes) of the container named `container` (or the first one).
pub fn task_memory_limits(task_definition: &Path, container: Option<&str>) -> Result<(u64, Option<u64>)> {
    let text = std::fs::read_to_string(task_definition)
        .with_context(|| format!("reading {}", task_definition.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", task_definition.display()))?;
    let containers = doc["containerDefinitions"]
        .as_array()
        .ok_or_else(|| anyhow!("{}: no containerDefinitions", task_definition.display()))?;
    let c = containers
        .iter()
        .find(|c| container.is_none_or(|n| c["name"] == n))
        .ok_or_else(|| anyhow!("{}: no container {container:?}", task_definition.display()))?;
    let mib = |v: &serde_json::Value| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok()));
    let hard = mib(&c["memory"])
        .ok_or_else(|| anyhow!("{}: container has no `memory` limit", task_definition.display()))?;
    Ok((hard << 20, mib(&c["memoryReservation"]).map(|m| m << 20)))
}

/// Which cgroup interface holds the memory controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V2,
    V1,
}

/// A memory cgroup of our own; removed on drop.
#[derive(Debug)]
pub struct MemoryCgroup {
    dir: PathBuf,
    version: Version,
    limit: u64,
}

/// Usage figures of the cgroup (bytes).
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub current: u64,
    pub peak: u64,
    /// OOM kills (v2 `oom_kill`, v1 `oom_kill` of `memory.oom_control`).
    pub oom_kills: u64,
    /// Times the limit was hit (v2 `max` events, v1 `memory.failcnt`).
    pub limit_hits: u64,
}

fn v2_root_with_memory() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"].iter().map(PathBuf::from).find(|root| {
        std::fs::read_to_string(root.join("cgroup.subtree_control"))
            .or_else(|_| std::fs::read_to_string(root.join("cgroup.controllers")))
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"))
    })
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (`memory.events`, `memory.oom_control`).
fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

impl MemoryCgroup {
    /// Creates `eddy-soak-<pid>-<tag>` with `memory.max = limit` (and `memory.low = soft`).
    pub fn create(tag: &str, limit: u64, soft: Option<u64>) -> Result<MemoryCgroup> {
        let name = format!("eddy-soak-{}-{tag}", std::process::id());
        let (version, dir) = match v2_root_with_memory() {
            Some(root) => (Version::V2, root.join(name)),
            None => {
                let root = PathBuf::from("/sys/fs/cgroup/memory");
                if !root.join("memory.limit_in_bytes").exists() {
                    bail!("no memory controller: neither cgroup v2 with `memory` nor a v1 memory hierarchy");
                }
                (Version::V1, root.join(name))
            }
        };
        std::fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        let cg = MemoryCgroup { dir, version, limit };
        match version {
            Version::V2 => {
                write(&cg.dir.join("memory.max"), &limit.to_string())?;
                if let Some(s) = soft {
                    write(&cg.dir.join("memory.low"), &s.to_string())?;
                }
                // No swap: the limit is the limit (as with ECS `memory` and no swap configured).
                let _ = write(&cg.dir.join("memory.swap.max"), "0");
            }
            Version::V1 => {
                write(&cg.dir.join("memory.limit_in_bytes"), &limit.to_string())?;
                if let Some(s) = soft {
                    write(&cg.dir.join("memory.soft_limit_in_bytes"), &s.to_string())?;
                }
            }
        }
        Ok(cg)
    }

    /// `cgroup.procs` of the cgroup: a child writes `0` to it (itself) before `exec`.
    pub fn procs_path(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Current and peak usage and OOM events.
    pub fn usage(&self) -> Usage {
        let d = &self.dir;
        match self.version {
            Version::V2 => Usage {
                current: read_u64(&d.join("memory.current")).unwrap_or(0),
                peak: read_u64(&d.join("memory.peak")).unwrap_or(0),
                oom_kills: keyed(&d.join("memory.events"), "oom_kill").unwrap_or(0),
                limit_hits: keyed(&d.join("memory.events"), "max").unwrap_or(0),
            },
            Version::V1 => Usage {
                current: read_u64(&d.join("memory.usage_in_bytes")).unwrap_or(0),
                peak: read_u64(&d.join("memory.max_usage_in_bytes")).unwrap_or(0),
                oom_kills: keyed(&d.join("memory.oom_control"), "oom_kill").unwrap_or(0),
                limit_hits: read_u64(&d.join("memory.failcnt")).unwrap_or(0),
            },
        }
    }

    /// Process ids in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.procs_path())
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("warning: could not remove cgroup {}", self.dir.display());
    }
}

/// Makes the calling (forked, not yet exec'd) process join the cgroup whose `cgroup.procs` is
/// `procs` (a NUL-terminated path): only async-signal-safe calls, for `Command::pre_exec`.
pub fn join_in_child(procs: &std::ffi::CStr) -> std::io::Result<()> {
    // SAFETY: open/write/close on a valid NUL-terminated path and a static buffer; no allocation.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, b"0".as_ptr().cast(), 1);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n != 1 {
            return Err(err);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_daemon_task_definition_limits() {
        let td = Path::new(env!("CARGO_MANIFEST_DIR")).join("../task-definitions/eddy-daemon.json");
        let (hard, soft) = task_memory_limits(&td, Some("eddy-agent")).expect("limits");
        let soft = soft.expect("memoryReservation");
        assert!(hard % (1 << 20) == 0 && soft % (1 << 20) == 0 && soft <= hard, "{hard} {soft}");
        assert!(task_memory_limits(&td, Some("nope")).is_err());
    }
}
