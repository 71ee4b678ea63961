//! Allocator tuning at start-up. glibc gives every thread that allocates concurrently its own
//! malloc arena, and each arena keeps the high-water mark of what it once held: the API's
//! large transient answers (`/flows`, `/metrics`) built on the blocking pool, the collector's
//! batches, the exporters' copies. The soak (README, "Soak") measured 30,000 connections with
//! default arenas exceeding the task definition's 512 MiB within 16 s, and staying at a 382 MiB
//! peak with one arena. So the agent asks for one arena, unless the operator set
//! `MALLOC_ARENA_MAX` (glibc reads it itself; an explicit value wins).
//!
//! The one arena still keeps freed memory below its top (a start-up peak: aya parses the
//! kernel's BTF, tens of MiB; a large `/flows` answer): [`trim`] hands free pages back, once
//! the programs are loaded and after every export interval. Measured idle on 6.18: 30.4 MiB
//! resident, 17.0 MiB of it heap; after a trim 15.5 MiB, 2.0 MiB heap.
//!
//! Limits: glibc only (the static release build); other allocators ignore the calls.

/// Arenas when `MALLOC_ARENA_MAX` is not set.
pub const ARENAS: i32 = 1;

/// Limits malloc arenas to [`ARENAS`]; call before any other thread exists. Returns the limit
/// applied, or `None` when the environment sets one or the allocator refused.
pub fn limit_arenas() -> Option<i32> {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return None;
    }
    // SAFETY: mallopt only changes a tunable of glibc's allocator; M_ARENA_MAX takes any
    // positive count and is documented as safe to set at any time (it bounds arenas created later).
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENAS) };
    (ok == 1).then_some(ARENAS)
}

/// Returns the free memory of the heap to the kernel (`malloc_trim`): a walk of the arena's
/// free chunks, well under a millisecond for the agent's heap.
pub fn trim() {
    // SAFETY: malloc_trim only releases free memory of glibc's arenas (madvise on free pages);
    // it takes the arena locks itself and touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}
