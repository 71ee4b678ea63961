//! Opening a `NETLINK_SOCK_DIAG` socket inside other network namespaces: a netlink
//! socket stays bound to the namespace it was created in, so it is created once per
//! namespace, on a dedicated thread that enters the namespace (`setns`), creates the
//! socket and goes back; the socket is then used from the collector thread.
//!
//! How: [`open_sockets`] spawns one short-lived thread per batch of new namespaces (so
//! neither the main thread, the collector thread nor a tokio worker ever changes
//! namespace). For each target it opens `/proc/<pid>/ns/net`, checks that the handle is
//! still the namespace the walk saw (a pid can be reused), `setns`es into it, opens the
//! socket, `setns`es back into the thread's original namespace and checks that it is
//! there. [`probe`] tells whether this process may enter network namespaces at all
//! (`CAP_SYS_ADMIN`) by trying it: entering its own namespace on a throwaway thread.
//!
//! Limits: failing to return to the original namespace is fatal for the thread: it is
//! logged, the socket made after it is discarded and the batch's remaining namespaces are
//! not tried (they are retried at the next scan, on a new thread).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use netlink_sys::Socket;
use nix::sched::{CloneFlags, setns};

use super::{SockDiagError, netlink};

/// The calling thread's network namespace (Linux 3.17+).
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Why a namespace could not be entered (each kind is a drop counter in `/status`).
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("{path} is now network namespace {found}, not {expected} (the process moved or exited)")]
    Changed { path: String, expected: u32, found: u64 },
    #[error("setns into network namespace {inode}: {source}")]
    Setns { inode: u32, source: nix::Error },
    #[error("netlink socket in network namespace {inode}: {source}")]
    Socket { inode: u32, source: SockDiagError },
    #[error("cannot return to the agent's network namespace after entering {inode}: {reason}")]
    Restore { inode: u32, reason: String },
    #[error(
        "not tried: the namespace thread stopped (it could not return from a namespace, or did not start)"
    )]
    NotTried,
    #[error("cannot start a thread to enter network namespaces: {0}")]
    Thread(std::io::Error),
}

impl EnterError {
    /// The drop counter this failure is counted in.
    pub fn kind(&self) -> &'static str {
        match self {
            EnterError::Open { .. } => "namespace_open_failed",
            EnterError::Changed { .. } => "namespace_changed",
            EnterError::Setns { .. } => "namespace_enter_failed",
            EnterError::Socket { .. } => "namespace_socket_failed",
            EnterError::Restore { .. } => "namespace_restore_failed",
            EnterError::NotTried | EnterError::Thread(_) => "namespace_not_tried",
        }
    }

    /// Every kind, for stable `/status` keys.
    pub const KINDS: [&'static str; 6] = [
        "namespace_open_failed",
        "namespace_changed",
        "namespace_enter_failed",
        "namespace_socket_failed",
        "namespace_restore_failed",
        "namespace_not_tried",
    ];
}

/// A namespace to open a socket in: its inode and a process in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub inode: u32,
    pub pid: u32,
}

/// Whether this process may enter network namespaces: enters its own on a throwaway thread.
pub fn probe() -> Result<(), EnterError> {
    let thread = std::thread::Builder::new().name("sock-diag-probe".into()).spawn(|| {
        let own = File::open(THREAD_NETNS)
            .map_err(|source| EnterError::Open { path: THREAD_NETNS.into(), source })?;
        let inode = u32::try_from(own.metadata().map(|m| m.ino()).unwrap_or_default()).unwrap_or_default();
        // Same namespace: nothing changes when it works.
        setns(&own, CloneFlags::CLONE_NEWNET).map_err(|source| EnterError::Setns { inode, source })
    });
    match thread {
        Ok(handle) => handle.join().unwrap_or(Err(EnterError::NotTried)),
        Err(e) => Err(EnterError::Thread(e)),
    }
}

/// Opens one socket in each target namespace (see the module docs); results in target order.
pub fn open_sockets(proc_root: &Path, targets: &[Target]) -> Vec<(u32, Result<Socket, EnterError>)> {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("sock-diag-netns".into())
            .spawn_scoped(scope, || open_on_this_thread(proc_root, targets));
        match thread {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|_| targets.iter().map(|t| (t.inode, Err(EnterError::NotTried))).collect()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the sock_diag namespace thread");
                let copy = || std::io::Error::new(e.kind(), e.to_string());
                targets.iter().map(|t| (t.inode, Err(EnterError::Thread(copy())))).collect()
            }
        }
    })
}

/// Runs on the dedicated thread: enters each namespace in turn, always coming back.
fn open_on_this_thread(proc_root: &Path, targets: &[Target]) -> Vec<(u32, Result<Socket, EnterError>)> {
    let mut out = Vec::with_capacity(targets.len());
    let original = match File::open(THREAD_NETNS) {
        Ok(f) => f,
        Err(e) => {
            // Nowhere to come back to: enter nothing.
            let copy = || std::io::Error::new(e.kind(), e.to_string());
            let err = || EnterError::Open { path: THREAD_NETNS.into(), source: copy() };
            return targets.iter().map(|t| (t.inode, Err(err()))).collect();
        }
    };
    let original_inode = original.metadata().map(|m| m.ino()).ok();
    let mut stopped = false;
    for t in targets {
        if stopped {
            out.push((t.inode, Err(EnterError::NotTried)));
            continue;
        }
        let r = open_in(proc_root, *t, &original, original_inode);
        if let Err(e @ EnterError::Restore { .. }) = &r {
            tracing::error!(
                error = %e,
                "the sock_diag namespace thread could not return to the agent's network namespace; it stops \
                 (the remaining namespaces are retried at the next scan on a new thread)"
            );
            stopped = true;
        }
        out.push((t.inode, r));
    }
    out
}

/// One namespace: enter, open, come back (never skipping the way back).
fn open_in(
    proc_root: &Path,
    t: Target,
    original: &File,
    original_inode: Option<u64>,
) -> Result<Socket, EnterError> {
    let path = proc_root.join(t.pid.to_string()).join("ns/net");
    let shown = || path.display().to_string();
    let ns = File::open(&path).map_err(|source| EnterError::Open { path: shown(), source })?;
    let found =
        ns.metadata().map(|m| m.ino()).map_err(|source| EnterError::Open { path: shown(), source })?;
    if found != u64::from(t.inode) {
        return Err(EnterError::Changed { path: shown(), expected: t.inode, found });
    }
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| EnterError::Setns { inode: t.inode, source })?;
    let socket = netlink::open();
    let back = setns(original, CloneFlags::CLONE_NEWNET);
    let here = std::fs::metadata(THREAD_NETNS).map(|m| m.ino()).ok();
    match back {
        Err(e) => Err(EnterError::Restore { inode: t.inode, reason: e.to_string() }),
        Ok(()) if here.is_none() || here != original_inode => Err(EnterError::Restore {
            inode: t.inode,
            reason: format!("the thread is in namespace {here:?}, not {original_inode:?}"),
        }),
        Ok(()) => socket.map_err(|source| EnterError::Socket { inode: t.inode, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Target {
        let inode = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).unwrap_or_default();
        Target { inode: u32::try_from(inode).unwrap_or_default(), pid: std::process::id() }
    }

    /// Entering this process's own namespace through `/proc/<pid>/ns/net` (root only): the socket
    /// dumps, the caller's namespace is untouched, and bad targets fail with their own kinds.
    #[test]
    fn opens_a_socket_through_proc_and_comes_back() {
        if probe().is_err() {
            eprintln!("SKIP opens_a_socket_through_proc_and_comes_back: cannot setns (not root)");
            return;
        }
        let before = std::fs::metadata(THREAD_NETNS).map(|m| m.ino()).ok();
        let wrong = Target { inode: own().inode.wrapping_add(1), ..own() };
        let gone = Target { inode: own().inode, pid: u32::MAX };
        let r = open_sockets(Path::new("/proc"), &[own(), wrong, gone]);
        assert_eq!(std::fs::metadata(THREAD_NETNS).map(|m| m.ino()).ok(), before);
        let kinds: Vec<&str> =
            r.iter().map(|(_, r)| r.as_ref().map_or_else(|e| e.kind(), |_| "ok")).collect();
        assert_eq!(kinds, ["ok", "namespace_changed", "namespace_open_failed"]);
        let Some((_, Ok(socket))) = r.into_iter().next() else { panic!("no socket") };
        netlink::dump_tcp(&socket, 7, false, &mut netlink::Dump::default(), 10).expect("dump");
    }
}
