//! Which network namespaces have a process in them: a walk of `/proc/<pid>/ns/net`,
//! deduplicated by the namespace's inode (what `/proc/<pid>/ns/net` links to and what
//! flows report as `netns`), each with one process in it (to open the namespace by).
//!
//! How: `/proc` is listed, and the `ns/net` link of each process is `stat`ed (no read,
//! no `setns`). With the host's pid namespace and root this finds the host's, every
//! awsvpc task's (its pause container) and docker's bridge namespace.
//!
//! Limits: at most `limit` namespaces per walk; namespaces that already have a socket
//! (`keep`) are always kept, new ones fill the rest in `/proc` order and the others are
//! counted (distinct ones, up to [`MAX_COUNTED_OVER`]). At most [`MAX_PIDS`] processes
//! are read. A namespace no process is in (a bind mount under `/run/netns` alone, or a
//! thread that entered it without its process) is not found. Processes that exit during
//! the walk are skipped; links that cannot be read (permission denied) are counted.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Processes read per walk, at most.
pub const MAX_PIDS: usize = 200_000;
/// Distinct namespaces beyond the limit that a walk counts, at most.
pub const MAX_COUNTED_OVER: usize = 65_536;

/// Why the walk could not run.
#[derive(Debug, thiserror::Error)]
pub enum NamespacesError {
    #[error("cannot list {path}: {source}")]
    ListProc { path: String, source: std::io::Error },
}

/// What one walk found.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Namespace inode → a process in it.
    pub found: HashMap<u32, u32>,
    /// Distinct namespaces beyond the limit (not kept).
    pub over_limit: u64,
    /// Processes whose `ns/net` link could not be read (other than by exiting).
    pub unreadable: u64,
    /// The walk stopped at [`MAX_PIDS`] processes.
    pub truncated: bool,
}

/// Walks `proc_root` (normally `/proc`); see the module docs.
pub fn discover(proc_root: &Path, limit: usize, keep: &HashSet<u32>) -> Result<Discovery, NamespacesError> {
    let rd = std::fs::read_dir(proc_root)
        .map_err(|source| NamespacesError::ListProc { path: proc_root.display().to_string(), source })?;
    let mut d = Discovery::default();
    // Room for new namespaces: the kept ones are always admitted.
    let new_room = limit.saturating_sub(keep.len());
    let mut new = 0usize;
    let mut over: HashSet<u32> = HashSet::new();
    let mut pids = 0usize;
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        pids += 1;
        if pids > MAX_PIDS {
            d.truncated = true;
            break;
        }
        let inode = match std::fs::metadata(e.path().join("ns/net")) {
            Ok(m) => m.ino(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue, // exited
            Err(_) => {
                d.unreadable += 1;
                continue;
            }
        };
        let Ok(inode) = u32::try_from(inode) else {
            d.unreadable += 1;
            continue;
        };
        if d.found.contains_key(&inode) {
            continue;
        }
        if keep.contains(&inode) {
            d.found.insert(inode, pid);
        } else if new < new_room {
            new += 1;
            d.found.insert(inode, pid);
        } else if over.len() < MAX_COUNTED_OVER {
            over.insert(inode);
        }
    }
    d.over_limit = over.len() as u64;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_netns() -> u32 {
        let ino = std::fs::metadata("/proc/self/ns/net").expect("stat own netns").ino();
        u32::try_from(ino).expect("u32 inode")
    }

    #[test]
    fn finds_this_process_namespace_once_with_a_process_in_it() {
        let d = discover(Path::new("/proc"), 1024, &HashSet::new()).expect("walk /proc");
        let me = own_netns();
        let pid = d.found.get(&me).copied().expect("own namespace found");
        let ino = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino()).unwrap_or_default();
        // The process may have exited since; when it has not, it is in the namespace.
        assert!(ino == 0 || ino == u64::from(me), "{pid}: {ino}");
        assert!(!d.truncated);
    }

    /// A fake `/proc` whose `ns/net` entries are files: their inodes stand for namespaces.
    #[test]
    fn bounded_by_the_limit_keeping_known_namespaces_and_counting_the_rest() {
        let dir = std::env::temp_dir().join(format!("eddy-ns-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut inodes = Vec::new();
        for pid in 1..=5u32 {
            let ns = dir.join(pid.to_string()).join("ns");
            std::fs::create_dir_all(&ns).expect("mkdir");
            std::fs::write(ns.join("net"), b"").expect("file");
            let ino = std::fs::metadata(ns.join("net")).expect("stat").ino();
            inodes.push(u32::try_from(ino).expect("u32 inode"));
        }
        // Two processes share a namespace: a hard link is the same inode.
        std::fs::create_dir_all(dir.join("6/ns")).expect("mkdir");
        std::fs::hard_link(dir.join("1/ns/net"), dir.join("6/ns/net")).expect("link");
        std::fs::create_dir_all(dir.join("self")).expect("not a pid");

        let all = discover(&dir, 1024, &HashSet::new()).expect("walk");
        assert_eq!((all.found.len(), all.over_limit, all.unreadable), (5, 0, 0));

        let keep = HashSet::from([inodes[4]]);
        let some = discover(&dir, 2, &keep).expect("walk");
        assert_eq!(some.found.len(), 2, "{:?}", some.found);
        assert!(some.found.contains_key(&inodes[4]), "a namespace with a socket stays");
        assert_eq!(some.over_limit, 3, "distinct namespaces left out");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
