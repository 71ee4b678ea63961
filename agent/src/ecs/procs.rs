//! The process table as a second way to a container: pid → the container its
//! `/proc/<pid>/cgroup` names (every line, cgroup v1 and v2), and network namespace →
//! the containers whose processes live in it.
//!
//! Why: on cgroup v1 and hybrid hosts (Amazon Linux 2) containers have no cgroup v2
//! directory of their own, so the socket's cgroup v2 id says only "root"; and a
//! socket may outlive its process or be held by a process Eddy cannot name. The
//! awsvpc pause container and the task's containers share the task's network
//! namespace; a bridge-mode container has its own; host-mode containers share the
//! host's (which therefore names nobody).
//!
//! Built by a background walk of `/proc` (the host's, with `pidMode: host`), bounded
//! to [`MAX_PIDS`] processes; lookups only read the result. A container process that
//! exited since the walk before stays in the index for one more walk (between one and
//! two walk intervals): its sockets close, or are last counted, after it is gone, and
//! they must still name it. Only pids that no longer exist are carried, so a reused pid
//! is named by its new owner.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::cgroup::{CgroupOwner, parse};

/// Processes read per walk, at most.
pub const MAX_PIDS: usize = 200_000;

/// What a walk of `/proc` found.
#[derive(Debug, Default)]
pub struct ProcIndex {
    /// Container of each containerised process.
    pub by_pid: HashMap<u32, CgroupOwner>,
    /// Containers with a process in each network namespace (host namespace excluded).
    pub by_netns: HashMap<u64, BTreeSet<String>>,
    /// The walk stopped at [`MAX_PIDS`].
    pub truncated: bool,
    /// Network namespace of each containerised process (outside the host's).
    netns_of: HashMap<u32, u64>,
    /// Pids of `by_pid` carried from the walk before (exited since): not carried again.
    exited: HashSet<u32>,
}

impl ProcIndex {
    /// Walks `proc_root` (normally `/proc`); `host_netns` is the inode of the host's
    /// network namespace, which names no container.
    pub fn walk(proc_root: &Path, host_netns: Option<u64>) -> ProcIndex {
        Self::walk_after(proc_root, host_netns, None)
    }

    /// [`walk`](Self::walk), keeping the container processes of `previous` (the walk before)
    /// that have exited since, for one more walk.
    pub fn walk_after(proc_root: &Path, host_netns: Option<u64>, previous: Option<&ProcIndex>) -> ProcIndex {
        let mut idx = ProcIndex::default();
        let Ok(rd) = std::fs::read_dir(proc_root) else { return idx };
        let mut alive = HashSet::new();
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if alive.len() >= MAX_PIDS {
                idx.truncated = true;
                break;
            }
            alive.insert(pid);
            let dir = e.path();
            let Some(owner) = std::fs::read_to_string(dir.join("cgroup")).ok().and_then(|t| owner_of(&t))
            else {
                continue;
            };
            if let Ok(ns) = std::fs::metadata(dir.join("ns/net")).map(|m| m.ino())
                && Some(ns) != host_netns
            {
                idx.by_netns.entry(ns).or_default().insert(owner.container_id.clone());
                idx.netns_of.insert(pid, ns);
            }
            idx.by_pid.insert(pid, owner);
        }
        // A truncated walk cannot tell exited pids from unread ones: nothing is carried.
        if let Some(prev) = previous.filter(|_| !idx.truncated) {
            idx.carry_exited(prev, &alive);
        }
        idx
    }

    /// Adds the container processes of `prev` that `alive` lacks (and `prev` had not carried).
    fn carry_exited(&mut self, prev: &ProcIndex, alive: &HashSet<u32>) {
        for (pid, owner) in &prev.by_pid {
            if alive.contains(pid) || prev.exited.contains(pid) {
                continue;
            }
            if let Some(ns) = prev.netns_of.get(pid) {
                self.by_netns.entry(*ns).or_default().insert(owner.container_id.clone());
                self.netns_of.insert(*pid, *ns);
            }
            self.by_pid.insert(*pid, owner.clone());
            self.exited.insert(*pid);
        }
    }

    /// Container processes in the index that had exited by this walk (carried from the one before).
    pub fn exited(&self) -> usize {
        self.exited.len()
    }
}

/// The container named by any line of a `/proc/<pid>/cgroup` file
/// (`hierarchy-id:controllers:path`).
pub fn owner_of(cgroup_file: &str) -> Option<CgroupOwner> {
    cgroup_file.lines().find_map(|l| parse(l.splitn(3, ':').nth(2)?))
}

/// Inode of this process's network namespace.
pub fn own_netns() -> Option<u64> {
    std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "9a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f30219a8b7c6d5e4f3021";
    const T: &str = "4b5c6d7e8f9041a2b3c4d5e6f7a8b9c0";

    #[test]
    fn cgroup_v1_and_v2_files() {
        let v1 = format!(
            "12:pids:/ecs/{T}/{C}\n11:memory:/ecs/{T}/{C}\n1:name=systemd:/ecs/{T}/{C}\n0::/system.slice/containerd.service\n"
        );
        assert_eq!(owner_of(&v1).map(|o| (o.container_id, o.task_id)), Some((C.into(), Some(T.into()))));
        let v2 = format!("0::/ecstasks.slice/ecstasks-{T}.slice/docker-{C}.scope\n");
        assert_eq!(owner_of(&v2).map(|o| o.container_id).as_deref(), Some(C));
        assert_eq!(owner_of("0::/user.slice/user-0.slice/session-3.scope\n"), None);
        assert_eq!(owner_of("garbage"), None);
    }

    #[test]
    fn walks_a_proc_shaped_tree() {
        let root = std::env::temp_dir().join(format!("eddy-proc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (pid, cg) in [("100", format!("0::/ecs/{T}/{C}\n")), ("200", "0::/init.scope\n".into())] {
            std::fs::create_dir_all(root.join(pid)).expect("mkdir");
            std::fs::write(root.join(pid).join("cgroup"), cg).expect("write");
        }
        // A directory stands in for the namespace file: its inode is the "namespace".
        std::fs::create_dir_all(root.join("100/ns/net")).expect("mkdir ns");
        std::fs::create_dir_all(root.join("self")).expect("not a pid");
        let ns = std::fs::metadata(root.join("100/ns/net")).expect("stat").ino();
        let idx = ProcIndex::walk(&root, None);
        assert_eq!(idx.by_pid.get(&100).map(|o| o.container_id.as_str()), Some(C));
        assert!(!idx.by_pid.contains_key(&200), "not a container");
        assert_eq!(idx.by_netns.get(&ns).map(|s| s.len()), Some(1));
        assert!(ProcIndex::walk(&root, Some(ns)).by_netns.is_empty(), "the host namespace names nobody");

        // 100 exits: the next walk still names it and its namespace, the one after does not.
        std::fs::remove_dir_all(root.join("100")).expect("exit");
        let after = ProcIndex::walk_after(&root, None, Some(&idx));
        assert_eq!(after.by_pid.get(&100).map(|o| o.container_id.as_str()), Some(C), "carried once");
        assert_eq!(after.by_netns.get(&ns).map(|s| s.len()), Some(1));
        assert_eq!(after.exited(), 1);
        let later = ProcIndex::walk_after(&root, None, Some(&after));
        assert!(later.by_pid.is_empty() && later.by_netns.is_empty(), "not carried twice");
        // A reused pid (now a host process) is not named by the container it had before.
        std::fs::create_dir_all(root.join("100")).expect("mkdir");
        std::fs::write(root.join("100/cgroup"), "0::/init.scope\n").expect("write");
        assert!(ProcIndex::walk_after(&root, None, Some(&idx)).by_pid.is_empty(), "pid reused");
        std::fs::remove_dir_all(root).ok();
    }
}
