//! Startup checks: before loading anything, find out whether this host and this
//! process can run the eBPF collector, and if not, say exactly what is missing
//! and how to fix it (one paragraph, non-zero exit).

use std::path::{Path, PathBuf};

use serde::Serialize;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Where the agent mounts a cgroup2 hierarchy of its own when the host has none (cgroup
/// v1-only hosts: the ECS-optimized Amazon Linux 2 AMI, Bottlerocket aws-ecs-1).
pub const OWN_CGROUP2: &str = "/run/eddy/cgroup2";

/// What the collector runs on, for `/status`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct KernelInfo {
    pub release: String,
    pub btf: bool,
    pub cgroup2: Option<PathBuf>,
    /// The agent mounted `cgroup2` itself (at [`OWN_CGROUP2`]): the host mounts none.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cgroup2_mounted_by_agent: bool,
}

/// Something this host or process lacks.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "eddy-agent cannot load eBPF programs: this process lacks {missing} (effective capabilities \
         {cap_eff:#x}). Run it as root, or grant the capabilities: in an ECS task definition add \
         `linuxParameters.capabilities.add: [\"BPF\", \"PERFMON\", \"NET_ADMIN\"]` (kernels before \
         5.8 need \"SYS_ADMIN\" instead of BPF and PERFMON); with docker/podman use \
         `--cap-add BPF --cap-add PERFMON --cap-add NET_ADMIN`. Where eBPF is not allowed at all \
         (Fargate), Eddy cannot use this collector."
    )]
    NotPrivileged { missing: String, cap_eff: u64 },
    #[error(
        "eddy-agent needs kernel BTF (/sys/kernel/btf/vmlinux) to relocate its CO-RE programs, and \
         this kernel ({release}) does not expose it. Use a kernel built with CONFIG_DEBUG_INFO_BTF=y \
         (Amazon Linux 2 with kernel 5.10, Amazon Linux 2023 and Bottlerocket all have it); inside a \
         container, make sure /sys is the host's (it is by default)."
    )]
    NoBtf { release: String },
    #[error(
        "eddy-agent attaches its UDP programs to the cgroup v2 hierarchy, and none is mounted here \
         (no cgroup2 entry in /proc/self/mountinfo); mounting one at /run/eddy/cgroup2 failed \
         ({mount_error}). Mount it (`mount -t cgroup2 none /sys/fs/cgroup/unified`), point the \
         agent at an existing mount with EDDY_CGROUP_PATH / --cgroup-path, or turn UDP off with \
         EDDY_UDP=false."
    )]
    NoCgroup2 { mount_error: String },
    #[error("the configured cgroup_path {0} is not a cgroup v2 mount point")]
    NotCgroup2(PathBuf),
}

/// Runs every check; returns what was found.
pub fn check(udp: bool, cgroup_override: Option<&Path>) -> Result<KernelInfo, PreflightError> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    let cap_eff =
        std::fs::read_to_string("/proc/self/status").ok().and_then(|s| parse_cap_eff(&s)).unwrap_or(0);
    let missing = missing_caps(cap_eff, udp);
    if !missing.is_empty() {
        return Err(PreflightError::NotPrivileged { missing: missing.join(" and "), cap_eff });
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(PreflightError::NoBtf { release });
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let found = cgroup2_mounts(&mounts);
    let mut mounted_by_agent = false;
    let cgroup2 = match cgroup_override {
        Some(p) if found.iter().any(|m| m == p) => Some(p.to_path_buf()),
        Some(p) => return Err(PreflightError::NotCgroup2(p.to_path_buf())),
        None => match preferred(&found) {
            Some(p) => Some(p),
            // A cgroup v1-only host: the hierarchy exists in the kernel even when nobody mounted
            // it, and its root holds every process, so programs attached there see every socket.
            None => match mount_own_cgroup2() {
                Ok(p) => {
                    mounted_by_agent = true;
                    tracing::info!(path = %p.display(), "no cgroup2 mounted on this host: mounted one");
                    Some(p)
                }
                Err(e) if udp => return Err(PreflightError::NoCgroup2 { mount_error: e }),
                Err(e) => {
                    tracing::warn!(error = %e, "no cgroup2 mounted on this host and mounting one failed");
                    None
                }
            },
        },
    };
    Ok(KernelInfo { release, btf: true, cgroup2, cgroup2_mounted_by_agent: mounted_by_agent })
}

/// Mounts cgroup2 at [`OWN_CGROUP2`] (or finds it mounted there by an earlier run).
fn mount_own_cgroup2() -> Result<PathBuf, String> {
    let path = PathBuf::from(OWN_CGROUP2);
    std::fs::create_dir_all(&path).map_err(|e| format!("creating {OWN_CGROUP2}: {e}"))?;
    nix::mount::mount(Some("cgroup2"), &path, Some("cgroup2"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|e| format!("mount -t cgroup2 none {OWN_CGROUP2}: {e}"))?;
    Ok(path)
}

/// What `/status` reports about the kernel when the eBPF preflight is not run (the
/// sock_diag collector needs none of it): release, BTF presence, the cgroup2 mount.
pub fn kernel_info(cgroup_override: Option<&Path>) -> KernelInfo {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let found = cgroup2_mounts(&mounts);
    let cgroup2 = match cgroup_override {
        Some(p) if found.iter().any(|m| m == p) => Some(p.to_path_buf()),
        _ => preferred(&found),
    };
    KernelInfo {
        release,
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
        cgroup2,
        cgroup2_mounted_by_agent: false,
    }
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
}

fn missing_caps(cap_eff: u64, udp: bool) -> Vec<&'static str> {
    let has = |c: u32| cap_eff & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
        missing.push("CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN)");
    }
    if udp && !(has(CAP_NET_ADMIN) || has(CAP_SYS_ADMIN)) {
        missing.push("CAP_NET_ADMIN (for the UDP cgroup_skb programs)");
    }
    missing
}

/// Mount points of cgroup2 filesystems, from /proc/self/mountinfo.
fn cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            let mountpoint = pre.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(mountpoint.replace("\\040", " ")))
        })
        .collect()
}

/// The unified root (`/sys/fs/cgroup`) first, then the hybrid layout's `unified`.
fn preferred(found: &[PathBuf]) -> Option<PathBuf> {
    for want in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if let Some(p) = found.iter().find(|p| p.as_os_str() == want) {
            return Some(p.clone());
        }
    }
    found.first().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_layouts() {
        assert_eq!(preferred(&cgroup2_mounts(HYBRID)), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified =
            "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n31 30 0:27 / /x/y rw - cgroup2 c rw\n";
        assert_eq!(preferred(&cgroup2_mounts(unified)), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(preferred(&cgroup2_mounts("garbage\n")), None);
    }

    #[test]
    fn capability_rules() {
        let bit = |c: u32| 1u64 << c;
        assert!(missing_caps(bit(CAP_SYS_ADMIN), true).is_empty());
        assert!(missing_caps(bit(CAP_BPF) | bit(CAP_PERFMON) | bit(CAP_NET_ADMIN), true).is_empty());
        assert_eq!(missing_caps(bit(CAP_BPF) | bit(CAP_PERFMON), true).len(), 1);
        assert!(missing_caps(bit(CAP_BPF) | bit(CAP_PERFMON), false).is_empty());
        assert_eq!(missing_caps(0, true).len(), 2);
        assert_eq!(parse_cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n"), Some(0x1ff_ffff_ffff));
    }

    #[test]
    fn errors_say_how_to_fix() {
        let e = PreflightError::NotPrivileged { missing: "CAP_BPF".into(), cap_eff: 0 }.to_string();
        assert!(e.contains("linuxParameters.capabilities.add"), "{e}");
        let e = PreflightError::NoCgroup2 { mount_error: "EPERM".into() }.to_string();
        assert!(e.contains("EDDY_UDP=false") && e.contains("EPERM"), "{e}");
    }
}
