//! Calls and kernel run time of each loaded program, as the kernel counts them (`run_cnt`,
//! `run_time_ns` of `bpf_prog_info`): what Eddy costs the traffic, per hook. The kernel keeps
//! these counters only while `kernel.bpf_stats_enabled` is 1 (the counting itself costs two
//! clock reads per call), so they are zero unless an operator or the benchmark turned it on.
//!
//! Read with one `BPF_OBJ_GET_INFO_BY_FD` per loaded program at each scan.

use std::collections::BTreeMap;

use aya::Ebpf;

use crate::collector::ProgramRuns;

/// The counters of every loaded program (programs that did not load are left out).
pub fn of_programs(ebpf: &Ebpf) -> BTreeMap<String, ProgramRuns> {
    ebpf.programs()
        .filter_map(|(name, p)| {
            let info = p.info().ok()?;
            let runs = ProgramRuns { runs: info.run_count(), run_time_ns: info.run_time().as_nanos() as u64 };
            Some((name.to_string(), runs))
        })
        .collect()
}
