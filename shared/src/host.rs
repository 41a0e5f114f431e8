//! The machine a process runs on, as it names itself: what a worker's
//! default name starts with and what a coordinator's lock on its database
//! says of its holder.

/// The host's name (the kernel's, else `$HOSTNAME`); `None` when neither
/// says one.
pub fn name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}
