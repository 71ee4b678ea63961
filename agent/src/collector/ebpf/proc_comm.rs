//! The command name of a process, from `/proc/<pid>/comm`, for records whose kernel program
//! could name the process but not its command (the UDP programs on kernels whose
//! cgroup_skb programs may call `bpf_get_current_pid_tgid` but not `bpf_get_current_comm`).
//!
//! Limits: a process that exited before the first lookup stays without a comm; a pid reused
//! within [`MAX_AGE`] keeps the earlier name. The cache holds at most [`MAX_ENTRIES`] pids and
//! is emptied when full or older than [`MAX_AGE`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::flow::{FlowRecord, Protocol};

const MAX_ENTRIES: usize = 4096;
const MAX_AGE: Duration = Duration::from_secs(30);

/// Bounded pid → comm cache.
pub struct ProcComms {
    names: HashMap<u32, Option<Arc<str>>>,
    since: Instant,
}

impl Default for ProcComms {
    fn default() -> Self {
        ProcComms { names: HashMap::new(), since: Instant::now() }
    }
}

impl ProcComms {
    /// The comm of `pid`, if the process still exists (or did at its first lookup).
    pub fn get(&mut self, pid: u32) -> Option<Arc<str>> {
        if self.names.len() >= MAX_ENTRIES || self.since.elapsed() > MAX_AGE {
            self.names.clear();
            self.since = Instant::now();
        }
        self.names.entry(pid).or_insert_with(|| read_comm(pid)).clone()
    }

    /// Fills the comm of UDP records that have a pid and no comm.
    pub fn fill<'a>(&mut self, records: impl Iterator<Item = &'a mut FlowRecord>) {
        for r in records {
            if r.protocol == Protocol::Udp && r.comm.is_none() {
                r.comm = r.pid.and_then(|pid| self.get(pid));
            }
        }
    }
}

fn read_comm(pid: u32) -> Option<Arc<str>> {
    let raw = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let name = raw.trim_end_matches('\n');
    (!name.is_empty()).then(|| name.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_this_process_and_fills_only_udp_without_comm() {
        let mut c = ProcComms::default();
        let me = std::process::id();
        let expected = std::fs::read_to_string("/proc/self/comm").expect("own comm");
        assert_eq!(c.get(me).as_deref(), Some(expected.trim_end()));
        let (a, b) = ("127.0.0.1:1".parse().expect("addr"), "127.0.0.1:2".parse().expect("addr"));
        let mut udp = FlowRecord::probe(a, b, false);
        udp.pid = Some(me);
        let mut tcp = FlowRecord::probe(a, b, true);
        tcp.pid = Some(me);
        c.fill([&mut udp, &mut tcp].into_iter());
        assert_eq!(udp.comm.as_deref(), Some(expected.trim_end()));
        assert_eq!(tcp.comm, None);
        assert_eq!(c.get(u32::MAX), None);
    }
}
