//! Socket cookies for connections that existed before the agent: one INET_DIAG dump of every
//! network namespace makes the kernel generate the cookie of every TCP socket it lists
//! (`sock_diag_save_cookie` → `sock_gen_cookie`).
//!
//! Why: the eBPF socket iterator's probe-read variant (kernels whose verifier treats the iterated
//! socket as untrusted) cannot call `bpf_get_socket_cookie()`; it keys sockets by the cookie that
//! already exists. Connections opened after the agent got one from the lifecycle programs; this
//! sweep gives one to those opened before. Nothing is kept from the dumps.
//!
//! Limits: namespaces as [`namespaces::discover`] finds them (with a process in them, at most
//! [`MAX_NAMESPACES`]); a namespace that cannot be entered keeps its old sockets without cookies
//! (counted by the iterator as `iterator_sockets_without_cookie`).

use std::collections::HashSet;
use std::path::Path;

use super::{MAX_NAMESPACES, enter, namespaces, netlink};

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub namespaces: u64,
    pub sockets: u64,
    /// Namespaces that could not be entered or dumped.
    pub failed: u64,
}

/// Dumps the TCP sockets of every namespace once (both families), keeping nothing.
pub fn sweep(proc_root: &Path) -> Sweep {
    let mut s = Sweep::default();
    let found = match namespaces::discover(proc_root, MAX_NAMESPACES, &HashSet::new()) {
        Ok(d) => d.found,
        Err(e) => {
            tracing::warn!(error = %e, "cookie sweep: cannot list the network namespaces");
            s.failed += 1;
            return s;
        }
    };
    let targets: Vec<enter::Target> =
        found.into_iter().map(|(inode, pid)| enter::Target { inode, pid }).collect();
    for (inode, socket) in enter::open_sockets(proc_root, &targets) {
        let socket = match socket {
            Ok(sock) => sock,
            Err(e) => {
                tracing::debug!(netns = inode, error = %e, "cookie sweep: namespace not entered");
                s.failed += 1;
                continue;
            }
        };
        let mut dump = netlink::Dump::default();
        let dumped = netlink::dump_tcp(&socket, 1, false, &mut dump, 0)
            .and_then(|()| netlink::dump_tcp(&socket, 2, true, &mut dump, 0));
        match dumped {
            Ok(()) => {
                s.namespaces += 1;
                s.sockets += dump.over_limit + dump.samples.len() as u64;
            }
            Err(e) => {
                tracing::debug!(netns = inode, error = %e, "cookie sweep: dump failed");
                s.failed += 1;
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_at_least_this_namespace_when_privileged() {
        let s = sweep(Path::new("/proc"));
        if enter::probe().is_ok() {
            assert!(s.namespaces >= 1, "{s:?}");
        } else {
            assert_eq!(s.namespaces, 0, "{s:?}");
        }
    }
}
