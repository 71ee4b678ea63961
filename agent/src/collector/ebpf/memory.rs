//! Kernel memory of the loaded maps, as the kernel charges it: the `memlock` line of each
//! map's `/proc/self/fdinfo` entry (the memory cgroup on 5.11+, RLIMIT_MEMLOCK before).
//! Read once after load: every map Eddy creates is preallocated (hash maps) or fixed in size
//! (arrays, ring buffers), so the figure does not change while the agent runs.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd};

use aya::Ebpf;
use aya::maps::{Map, MapData};

/// Bytes of kernel memory per map name (maps whose figure cannot be read are left out).
pub fn of_maps(ebpf: &Ebpf) -> BTreeMap<String, u64> {
    ebpf.maps()
        .filter_map(|(name, map)| {
            let fd = data(map)?.fd().as_fd().as_raw_fd();
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
            Some((name.to_string(), memlock(&info)?))
        })
        .collect()
}

/// The map types of Eddy's object.
fn data(m: &Map) -> Option<&MapData> {
    match m {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::RingBuf(d)
        | Map::SkStorage(d) => Some(d),
        _ => None,
    }
}

fn memlock(fdinfo: &str) -> Option<u64> {
    fdinfo.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_memlock_line() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t1\nkey_size:\t8\n\
                    value_size:\t168\nmax_entries:\t65536\nmap_flags:\t0x0\nmap_extra:\t0x0\n\
                    memlock:\t16257024\nmap_id:\t42\nfrozen:\t0\n";
        assert_eq!(memlock(info), Some(16_257_024));
        assert_eq!(memlock("pos:\t0\n"), None);
    }
}
