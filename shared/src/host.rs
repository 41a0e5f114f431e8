//! The machine a process runs on, as it names itself: what a worker's
//! default name starts with, its CPU's model (a worker's `model` label),
//! and what a coordinator's lock on its database says of its holder.

/// The host's name (the kernel's, else `$HOSTNAME`); `None` when neither
/// says one.
pub fn name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// The CPU's model as the kernel names it (`AMD EPYC 7B13 64-Core
/// Processor`); `None` where it does not say.
pub fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines().find_map(|l| l.strip_prefix("model name").and_then(|rest| rest.split_once(':')).map(|(_, m)| m.trim().to_string())).filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_linux_cpu_names_its_model() {
        if std::path::Path::new("/proc/cpuinfo").exists() && std::fs::read_to_string("/proc/cpuinfo").unwrap().contains("model name") {
            let model = super::cpu_model().expect("a model name");
            assert!(!model.is_empty() && !model.contains(':'), "{model}");
        }
    }
}
