//! Default map sizes scaled to host memory.
//!
//! One TCP map entry costs about 250 bytes of kernel memory (168-byte value,
//! key, hash overhead). Open connections leave the map when the socket is
//! destroyed (closed ones travel through the ring buffer), so the map only has
//! to hold what is open at once: one entry per 128 KiB of RAM, between 16 Ki and
//! 256 Ki entries (a 24 GiB host gets 196 608, ~48 MiB of kernel memory).

/// Upper bound accepted for any map size.
pub const MAX_MAP_ENTRIES: u32 = 16 << 20;

const MIN_DEFAULT: u64 = 16 << 10;
const MAX_DEFAULT: u64 = 256 << 10;

/// Default TCP map capacity for a host with `mem` bytes of RAM.
pub fn flow_map_entries(mem: u64) -> u32 {
    let n = (mem / (128 << 10)).clamp(MIN_DEFAULT, MAX_DEFAULT);
    u32::try_from(n).unwrap_or(MAX_MAP_ENTRIES)
}

/// Total RAM from /proc/meminfo (`MemTotal`), or 1 GiB if it cannot be read.
pub fn host_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| parse_meminfo_total(&s)).unwrap_or(1 << 30)
}

fn parse_meminfo_total(s: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_with_memory_within_bounds() {
        assert_eq!(flow_map_entries(512 << 20), 16 << 10);
        assert_eq!(flow_map_entries(24 << 30), 196_608);
        assert_eq!(flow_map_entries(1 << 40), 256 << 10);
    }

    #[test]
    fn reads_memtotal() {
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\nMemTotal:   2048 kB\n"), Some(2 << 20));
        assert_eq!(parse_meminfo_total("garbage"), None);
    }
}
