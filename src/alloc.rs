//! The process allocator: mimalloc for kproxy's own allocations, with freed pages purged at once.
//!
//! Invariants: only the binary installs it (`#[global_allocator]` in `main.rs`); libnftables,
//! loaded in-process, keeps the C library's heap to itself. With both on one glibc heap, the holes
//! a cold start leaves when it frees its element texts made libnftables' own allocations slow
//! (10,000 Services: 3.6 s instead of 1.8 s, mostly glibc's `malloc_consolidate`). Purging at
//! once (mimalloc 3 waits 1 s by default) keeps the peak resident set near the live heap
//! (BENCHMARKS.md: 273 MiB instead of ~360 MiB at 10,000 Services × 10 endpoints). Transparent
//! huge pages are off for the process: with purging at once, every refault of a purged 2 MiB
//! page was zeroed whole (a fifth of a cold start's samples) and kept ~22 MiB more resident.

pub use mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (include/mimalloc.h), which
/// libmimalloc-sys does not name.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// `mi_option_allow_thp` in the same enum.
const ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Purge freed memory at once, unless `MIMALLOC_PURGE_DELAY` says otherwise, and no transparent
/// huge pages, unless `MIMALLOC_ALLOW_THP` says otherwise. Call first thing in `main`.
pub fn configure() {
    // SAFETY: sets one integer option of the allocator; valid at any time.
    unsafe { libmimalloc_sys::mi_option_set_default(PURGE_DELAY, 0) };
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // mimalloc reads this option at its start (before main) to disable THP for the process;
        // here it stops its later huge-page hints, and the prctl does the rest.
        // SAFETY: as above; prctl with integer arguments only.
        unsafe {
            libmimalloc_sys::mi_option_set_default(ALLOW_THP, 0);
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_whose_default_is_1000_ms() {
        // SAFETY: reads one option.
        let v = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        // This test process does not call `configure`: mimalloc 3's default (src/options.c,
        // `purge_delay`, 1000 ms) must show; no neighbouring option has that default.
        assert_eq!(
            v, 1000,
            "option {PURGE_DELAY} is not mimalloc's purge_delay"
        );
    }

    #[test]
    fn the_allow_thp_option_is_on_by_default_and_followed_by_minimal_purge_size() {
        // SAFETY: reads one option.
        let v = unsafe { libmimalloc_sys::mi_option_get(ALLOW_THP) };
        assert_eq!(v, 1, "option {ALLOW_THP} is not mimalloc's allow_thp");
        // Its neighbour, minimal_purge_size, defaults to 0: a wrong index would show it.
        // SAFETY: reads one option.
        let next = unsafe { libmimalloc_sys::mi_option_get(ALLOW_THP + 1) };
        assert_eq!(next, 0);
    }
}
