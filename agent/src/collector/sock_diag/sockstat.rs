//! How many TCP sockets a network namespace has, per family, without dumping it: the
//! `inuse` counts of `/proc/<pid>/net/sockstat` (`TCP:`, IPv4) and `sockstat6` (`TCP6:`,
//! IPv6 and dual-stack sockets), which are per network namespace and cost a small file
//! read.
//!
//! Why: an INET_DIAG dump walks the kernel's whole TCP established hash (shared by every
//! namespace unless `tcp_child_ehash_entries` is set), so it costs about the same in an
//! empty namespace as in a busy one (~1.8 ms per family on a 262,144-bucket table, 2-vCPU VM). A
//! family whose count is 0 (and that has no flow left to close) needs no dump.
//!
//! Limits: `inuse` counts hashed sockets (listening, connecting, connected; not TIME_WAIT,
//! not request sockets, not sockets already in CLOSE), which are the ones a dump reports
//! with `tcp_info`. An unreadable or unparsable file gives `None` (then the caller dumps).

use std::path::Path;

/// Hashed TCP sockets of one namespace, per family (`None`: unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InUse {
    pub v4: Option<u64>,
    pub v6: Option<u64>,
}

/// Reads the counts of the namespace of process `pid` under `proc_root` (`None`: this process).
pub fn in_use(proc_root: &Path, pid: Option<u32>) -> InUse {
    let dir = match pid {
        Some(p) => proc_root.join(p.to_string()).join("net"),
        None => proc_root.join("self/net"),
    };
    let read = |file: &str, key: &str| {
        std::fs::read_to_string(dir.join(file)).ok().and_then(|text| parse(&text, key))
    };
    InUse { v4: read("sockstat", "TCP:"), v6: read("sockstat6", "TCP6:") }
}

/// The `inuse` value of the line starting with `key` (`TCP: inuse 5 orphan 0 tw 2 …`).
pub fn parse(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.split_whitespace().next() == Some(key))?;
    let mut words = line.split_whitespace().skip(1);
    while let Some(w) = words.next() {
        if w == "inuse" {
            return words.next()?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_inuse_counts() {
        let v4 = "sockets: used 120\nTCP: inuse 5 orphan 0 tw 2002 alloc 9 mem 1\nUDP: inuse 3 mem 0\n";
        assert_eq!(parse(v4, "TCP:"), Some(5));
        assert_eq!(parse(v4, "UDP:"), Some(3));
        let v6 = "TCP6: inuse 0\nUDP6: inuse 1\n";
        assert_eq!(parse(v6, "TCP6:"), Some(0));
        assert_eq!(parse(v6, "TCP:"), None);
        assert_eq!(parse("TCP: inuse x\n", "TCP:"), None);
    }

    #[test]
    fn reads_this_namespace_with_a_listener_counted() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let n = in_use(Path::new("/proc"), None);
        assert!(n.v4 >= Some(1), "{n:?}");
        let by_pid = in_use(Path::new("/proc"), Some(std::process::id()));
        assert!(by_pid.v4 >= Some(1), "{by_pid:?}");
        drop(listener);
    }
}
