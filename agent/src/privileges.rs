//! Least privilege at run time: once the collector has loaded and attached its programs (or
//! opened its netlink sockets), the agent keeps only the capabilities its running parts still
//! use, clears the ambient and inheritable sets, drops the rest of the bounding set and sets
//! `no_new_privs`, so that neither a bug in the agent nor anything it could execute regains them.
//!
//! What is kept ([`plan`]), each only if the process holds it at all:
//! - `CAP_BPF` (or `CAP_SYS_ADMIN` where `CAP_BPF` is not held), only where the kernel checks it on
//!   every `bpf()` command: the eBPF collector reads its maps and runs its socket iterator with
//!   `bpf()` on every scan. Older kernels (5.10: measured) refuse every command without it while
//!   unprivileged BPF is disabled; newer ones (6.1, 6.12, 6.18: measured) check only program loads
//!   and map creation. [`bpf_needs_capability`] finds out by trying, on a throwaway thread.
//! - `CAP_NET_ADMIN`: conntrack (on by default) re-subscribes and re-dumps over ctnetlink, which
//!   checks it on every message and on joining the event groups.
//! - `CAP_SYS_ADMIN`: the sock_diag collector that covers every network namespace `setns`es into
//!   new namespaces on every scan; `conntrack_netns` enters its namespace from its own thread.
//! - `CAP_SYS_PTRACE`: reading `/proc/<pid>/ns/net` of other processes (the sock_diag walk of
//!   namespaces, the ECS provider's process walk on EC2): the kernel's ptrace access check refuses
//!   a process of another user, or one holding capabilities the agent does not, without it.
//!
//! How: one `capset` (effective = permitted = kept, inheritable empty), `PR_CAP_AMBIENT_CLEAR_ALL`,
//! `PR_CAPBSET_DROP` for every other capability the bounding set holds (needs `CAP_SETPCAP`; without
//! it the bounding set is left as the container runtime set it), `PR_SET_NO_NEW_PRIVS`.
//!
//! Limits: capabilities belong to threads. The drop applies to the calling thread and to the
//! threads it starts later, so it must run before any other thread is started (the commands call
//! it before the async runtime and every worker thread exist). The agent stays uid 0 when it runs as
//! root: files owned by root stay writable by owner permission.

use serde::Serialize;

pub const CAP_SETPCAP: u32 = 8;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_BPF: u32 = 39;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets in two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Why the capability drop failed.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot read this process's capabilities (capget): {0}")]
    Read(std::io::Error),
    #[error("cannot drop {cap} from the bounding set (prctl PR_CAPBSET_DROP): {source}")]
    Bounding { cap: String, source: std::io::Error },
    #[error("cannot clear the ambient capabilities (prctl PR_CAP_AMBIENT_CLEAR_ALL): {0}")]
    Ambient(std::io::Error),
    #[error("cannot reduce the capabilities to {kept:?} (capset): {source}")]
    Set { kept: Vec<&'static str>, source: std::io::Error },
    #[error("cannot set no_new_privs (prctl PR_SET_NO_NEW_PRIVS): {0}")]
    NoNewPrivs(std::io::Error),
}

/// What the running agent uses (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Uses {
    /// The eBPF collector's `bpf()` commands on open maps and links (map reads, socket iterator),
    /// on a kernel that checks a capability for them ([`bpf_needs_capability`]).
    pub ebpf: bool,
    /// conntrack (ctnetlink dumps and events).
    pub conntrack: bool,
    /// Entering other network namespaces (`setns`): sock_diag over every namespace, `conntrack_netns`.
    pub enter_namespaces: bool,
    /// Reading other processes' `/proc/<pid>/ns/net` (sock_diag over every namespace, ECS on EC2).
    pub proc_namespaces: bool,
}

/// A capability kept after the drop, and what for.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Kept {
    pub name: &'static str,
    pub used_for: &'static str,
}

/// `/status` → `privileges`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PrivilegeStatus {
    /// Capabilities held after the drop (effective = permitted).
    pub capabilities: Vec<Kept>,
    /// Capabilities the process held before and gave up.
    pub dropped: Vec<&'static str>,
    /// Whether other capabilities were removed from the bounding set (needs CAP_SETPCAP).
    pub bounding_set_reduced: bool,
    pub no_new_privs: bool,
    /// Whether this kernel checks a capability on `bpf()` commands on open objects (absent without
    /// the eBPF collector).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpf_needs_capability: Option<bool>,
}

/// The capabilities to keep for `uses`, out of those `permitted` (a bit per capability number).
pub fn plan(uses: Uses, permitted: u64) -> Vec<(u32, &'static str)> {
    let has = |c: u32| permitted & (1 << c) != 0;
    let mut keep: Vec<(u32, &'static str)> = Vec::new();
    let mut add = |c: u32, why: &'static str| {
        if has(c) && !keep.iter().any(|(k, _)| *k == c) {
            keep.push((c, why));
        }
    };
    if uses.ebpf {
        if has(CAP_BPF) {
            add(CAP_BPF, "bpf(): map reads and the socket iterator on every scan (this kernel checks them)");
        } else {
            add(CAP_SYS_ADMIN, "bpf(): map reads and the socket iterator on every scan (no CAP_BPF held)");
        }
    }
    if uses.conntrack {
        add(CAP_NET_ADMIN, "conntrack: ctnetlink event groups and table dumps");
    }
    if uses.enter_namespaces {
        add(CAP_SYS_ADMIN, "setns into network namespaces (sock_diag over every namespace, conntrack_netns)");
    }
    if uses.proc_namespaces {
        add(CAP_SYS_PTRACE, "reading other processes' /proc/<pid>/ns/net (ptrace access check)");
    }
    keep.sort_by_key(|(c, _)| *c);
    keep
}

/// Drops every capability [`plan`] does not keep and sets `no_new_privs` (see the module docs).
/// A process without capabilities only gets `no_new_privs`: not an error. `withhold`: capabilities
/// given up although used (test fault injection, [`crate::faults::WITHHOLD_CAPS`]; normally 0).
pub fn drop_to(uses: Uses, withhold: u64) -> Result<PrivilegeStatus, PrivilegeError> {
    let before = read().map_err(PrivilegeError::Read)?;
    let mut keep = plan(uses, before.permitted);
    keep.retain(|(c, _)| withhold & (1 << c) == 0);
    let kept_mask = keep.iter().fold(0u64, |m, (c, _)| m | 1 << c);
    let mut bounding_set_reduced = false;
    if before.effective & (1 << CAP_SETPCAP) != 0 {
        for cap in 0..=last_cap() {
            if kept_mask & (1 << cap) != 0 || !in_bounding_set(cap) {
                continue;
            }
            // SAFETY: prctl with PR_CAPBSET_DROP takes a capability number and ignores the rest.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
            if rc != 0 {
                let source = std::io::Error::last_os_error();
                return Err(PrivilegeError::Bounding { cap: name(cap).to_string(), source });
            }
            bounding_set_reduced = true;
        }
    }
    // SAFETY: prctl with PR_CAP_AMBIENT / PR_CAP_AMBIENT_CLEAR_ALL takes no pointer.
    let rc = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    // EINVAL: a kernel before 4.3, which has no ambient set.
    let err = std::io::Error::last_os_error();
    if rc != 0 && err.raw_os_error() != Some(libc::EINVAL) {
        return Err(PrivilegeError::Ambient(err));
    }
    let names = || keep.iter().map(|(c, _)| name(*c)).collect::<Vec<_>>();
    write(Sets { effective: kept_mask, permitted: kept_mask, inheritable: 0 })
        .map_err(|source| PrivilegeError::Set { kept: names(), source })?;
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes the value 1 and zeros.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PrivilegeError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    let after = read().map_err(PrivilegeError::Read)?;
    Ok(PrivilegeStatus {
        capabilities: keep
            .iter()
            .filter(|(c, _)| after.effective & (1 << c) != 0)
            .map(|(c, why)| Kept { name: name(*c), used_for: why })
            .collect(),
        dropped: (0..64).filter(|c| before.permitted & !after.permitted & (1 << c) != 0).map(name).collect(),
        bounding_set_reduced,
        // SAFETY: prctl with PR_GET_NO_NEW_PRIVS takes no argument and returns 0 or 1.
        no_new_privs: unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } == 1,
        bpf_needs_capability: None,
    })
}

/// Whether `bpf()` commands on open maps and links need `CAP_BPF` (or `CAP_SYS_ADMIN`) on this
/// kernel: a throwaway thread without either in its effective set asks for a map lookup on fd -1.
/// `EPERM`: the kernel checks the capability before looking at the fd (every command is checked);
/// `EBADF`: it does not. Anything else (no thread, another error) counts as needed.
pub fn bpf_needs_capability() -> bool {
    let probe = std::thread::Builder::new().name("bpf-cap-probe".into()).spawn(|| {
        let Ok(mut sets) = read() else { return true };
        sets.effective &= !(1 << CAP_BPF | 1 << CAP_SYS_ADMIN);
        if write(sets).is_err() {
            return true;
        }
        // union bpf_attr for BPF_MAP_LOOKUP_ELEM: map_fd (u32, here -1), key, value, flags.
        let attr: [u64; 4] = [u64::from(u32::MAX), 0, 0, 0];
        // SAFETY: bpf() reads `size_of_val(&attr)` bytes from a valid, initialised buffer; fd -1
        // refers to no map, so nothing is read or written through the key and value pointers.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                libc::c_long::from(1i32),
                attr.as_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        rc != -1 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EBADF)
    });
    match probe {
        Ok(handle) => handle.join().unwrap_or(true),
        Err(_) => true,
    }
}

/// The three capability sets of the calling thread, a bit per capability number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sets {
    effective: u64,
    permitted: u64,
    inheritable: u64,
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct` (two of them with version 3: low and high 32 bits).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn read() -> std::io::Result<Sets> {
    let mut header = Header { version: CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two `__user_cap_data_struct`s (version 3) into `data`, which has room
    // for exactly two; both pointers are valid for the duration of the call.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut Header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let join = |f: fn(&Data) -> u32| u64::from(f(&data[0])) | u64::from(f(&data[1])) << 32;
    Ok(Sets {
        effective: join(|d| d.effective),
        permitted: join(|d| d.permitted),
        inheritable: join(|d| d.inheritable),
    })
}

fn write(s: Sets) -> std::io::Result<()> {
    let mut header = Header { version: CAPABILITY_VERSION_3, pid: 0 };
    let split = |v: u64| (v as u32, (v >> 32) as u32);
    let (e, p, i) = (split(s.effective), split(s.permitted), split(s.inheritable));
    let data = [
        Data { effective: e.0, permitted: p.0, inheritable: i.0 },
        Data { effective: e.1, permitted: p.1, inheritable: i.1 },
    ];
    // SAFETY: capset reads the header and two `__user_cap_data_struct`s (version 3) from valid,
    // initialised memory; pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    if rc != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

fn in_bounding_set(cap: u32) -> bool {
    // SAFETY: prctl with PR_CAPBSET_READ takes a capability number; 1 = in the set.
    unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) == 1 }
}

/// The highest capability number this kernel knows (`/proc/sys/kernel/cap_last_cap`).
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(CAP_BPF + 1)
        .min(63)
}

/// The capabilities named in `list` (kernel names, comma-separated) as a mask; `None` if one is unknown.
pub fn mask_of(list: &str) -> Option<u64> {
    list.split(',').map(str::trim).filter(|n| !n.is_empty()).try_fold(0u64, |m, n| {
        let cap = (0..64).find(|&c| name(c) == n)?;
        Some(m | 1 << cap)
    })
}

/// The kernel's name of a capability number (`CAP_<n>` for numbers newer than this list).
pub fn name(cap: u32) -> &'static str {
    const NAMES: [&str; 41] = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_MKNOD",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN",
        "CAP_SYSLOG",
        "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ",
        "CAP_PERFMON",
        "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE",
    ];
    NAMES.get(cap as usize).copied().unwrap_or("CAP_UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = (1 << 41) - 1;
    fn names(keep: &[(u32, &str)]) -> Vec<&'static str> {
        keep.iter().map(|(c, _)| name(*c)).collect()
    }

    #[test]
    fn keeps_only_what_the_running_parts_use_and_what_is_held() {
        let ebpf = Uses { ebpf: true, conntrack: true, ..Uses::default() };
        assert_eq!(names(&plan(ebpf, ALL)), ["CAP_NET_ADMIN", "CAP_BPF"]);
        // Without CAP_BPF (older Docker, kernels before 5.8) bpf() is allowed by CAP_SYS_ADMIN.
        let no_bpf = ALL & !(1 << CAP_BPF);
        assert_eq!(names(&plan(ebpf, no_bpf)), ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]);
        let ec2 = Uses { proc_namespaces: true, ..ebpf };
        assert_eq!(names(&plan(ec2, ALL)), ["CAP_NET_ADMIN", "CAP_SYS_PTRACE", "CAP_BPF"]);
        let sock_diag_all = Uses { enter_namespaces: true, proc_namespaces: true, ..Uses::default() };
        assert_eq!(names(&plan(sock_diag_all, ALL)), ["CAP_SYS_PTRACE", "CAP_SYS_ADMIN"]);
        // Unprivileged: nothing to keep, whatever is used.
        assert!(
            plan(Uses { ebpf: true, conntrack: true, enter_namespaces: true, proc_namespaces: true }, 0)
                .is_empty()
        );
        // Only what is held: NET_ADMIN alone stays NET_ADMIN alone.
        assert_eq!(names(&plan(ec2, 1 << CAP_NET_ADMIN)), ["CAP_NET_ADMIN"]);
    }

    #[test]
    fn names_match_the_kernel_numbers() {
        assert_eq!(name(CAP_NET_ADMIN), "CAP_NET_ADMIN");
        assert_eq!(name(CAP_SYS_PTRACE), "CAP_SYS_PTRACE");
        assert_eq!(name(CAP_SYS_ADMIN), "CAP_SYS_ADMIN");
        assert_eq!(name(38), "CAP_PERFMON");
        assert_eq!(name(CAP_BPF), "CAP_BPF");
        assert_eq!(name(99), "CAP_UNKNOWN");
    }
}
