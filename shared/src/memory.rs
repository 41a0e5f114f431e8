//! Keeps memory a render frees inside the process, for its next iteration.
//!
//! Every iteration allocates and frees the same large buffers (feature maps
//! and their gradients: hundreds of MiB at 800×600). glibc serves blocks
//! above its mmap threshold (at most 32 MiB) with fresh mappings and unmaps
//! them on free, so each iteration page-faults them in again and the kernel
//! zeroes every page: about 30% of an iteration at 800×600 on a 2-core VM
//! (`farmctl bench`: 1.50 s/iter before, 1.05 s/iter after). With mmap off
//! for allocations and trimming off, freed blocks go back to the heap and
//! are reused. The cost: the heap keeps its peak size until the process
//! exits, which suits a render process or a worker that renders one job
//! after another.

/// Call once at the start of a process that renders. No-op where the C
/// library is not glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation policy; called before
    // the process has started any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
