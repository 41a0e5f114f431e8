//! The name a worker registers under unless it is told one: the host's
//! name and the device (`render-7-cpu`, `render-7-cuda-0`), numbered when
//! several unnamed workers of one device run on one host (`render-7-cpu-2`).
//!
//! Names are unique in a farm (the coordinator refuses a second live worker
//! under a name), and stable: a restarted worker takes its predecessor's
//! name and so its place. The number is a slot held by an OS file lock in
//! the temporary folder for the worker's life; a new worker takes the
//! lowest free slot, so a restart gets the number of the one that died.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// The name, and the slot that keeps it this worker's while it runs.
#[derive(Debug)]
pub struct DefaultName {
    pub name: String,
    _slot: Option<File>,
}

/// The first free slot's name for `device` on this host.
pub fn default_name(device: &str) -> DefaultName {
    default_name_in(&std::env::temp_dir().join("stylefarm-worker-slots"), &stylefarm_shared::host::name().unwrap_or_else(|| "worker".into()), device)
}

/// [`default_name`] with its slots in `dir`. Where slots cannot be taken
/// (a read-only temporary folder) the plain host-and-device name is used.
pub fn default_name_in(dir: &Path, host: &str, device: &str) -> DefaultName {
    let base = format!("{host}-{}", device.replace(':', "-"));
    if std::fs::create_dir_all(dir).is_err() {
        return DefaultName { name: base, _slot: None };
    }
    for slot in 0..1024u32 {
        let Ok(file) = OpenOptions::new().write(true).create(true).truncate(false).open(slot_path(dir, device, slot)) else { break };
        if file.try_lock().is_ok() {
            let name = if slot == 0 { base } else { format!("{base}-{}", slot + 1) };
            return DefaultName { name, _slot: Some(file) };
        }
    }
    DefaultName { name: base, _slot: None }
}

fn slot_path(dir: &Path, device: &str, slot: u32) -> PathBuf {
    dir.join(format!("{}-{slot}.lock", device.replace(':', "-")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unnamed_workers_of_one_host_get_distinct_names_and_a_restart_gets_its_own_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = default_name_in(dir.path(), "h", "cpu");
        let second = default_name_in(dir.path(), "h", "cpu");
        let third = default_name_in(dir.path(), "h", "cpu");
        let gpu = default_name_in(dir.path(), "h", "cuda:0");
        assert_eq!((first.name.as_str(), second.name.as_str(), third.name.as_str(), gpu.name.as_str()), ("h-cpu", "h-cpu-2", "h-cpu-3", "h-cuda-0"));
        // The second ends (its slot is freed with it); the next unnamed
        // worker takes its name, not a fourth one.
        drop(second);
        assert_eq!(default_name_in(dir.path(), "h", "cpu").name, "h-cpu-2");
        drop((first, third, gpu));
    }
}
