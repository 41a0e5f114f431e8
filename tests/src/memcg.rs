//! A real memory cgroup for a test's child process: a pod's memory limit
//! without Kubernetes. Creating one needs root and a mounted memory
//! controller; where either is missing, [`MemoryCgroup::create`] says which,
//! and the test skips by that reason.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// A fresh cgroup with a memory limit; removed when dropped (its processes
/// must have ended by then: drop them first).
pub struct MemoryCgroup {
    pub version: CgroupVersion,
    pub dir: PathBuf,
}

impl MemoryCgroup {
    /// A new group under the hierarchy's mount with `limit` bytes of memory
    /// (and no swap beyond it), or why there can be none here.
    pub fn create(version: CgroupVersion, limit: u64) -> Result<MemoryCgroup, String> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("no /proc/self/mountinfo: {e}"))?;
        let mount = mounts.lines().find_map(|l| memory_mount(l, version)).ok_or_else(|| format!("no cgroup {version:?} hierarchy with the memory controller is mounted"))?;
        if version == CgroupVersion::V2 {
            // The root must hand the controller down to its children.
            std::fs::write(mount.join("cgroup.subtree_control"), "+memory").map_err(|e| format!("cannot enable memory in {}: {e}", mount.display()))?;
        }
        let dir = mount.join(format!("stylefarm-test-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {} (not root?): {e}", dir.display()))?;
        let group = MemoryCgroup { version, dir };
        let set = |name: &str, value: String| std::fs::write(group.dir.join(name), value).map_err(|e| format!("cannot write {name}: {e}"));
        match version {
            CgroupVersion::V1 => {
                set("memory.limit_in_bytes", limit.to_string())?;
                // Where swap is accounted, memory plus swap gets the same limit.
                if group.dir.join("memory.memsw.limit_in_bytes").exists() {
                    set("memory.memsw.limit_in_bytes", limit.to_string())?;
                }
            }
            CgroupVersion::V2 => {
                set("memory.max", limit.to_string())?;
                if group.dir.join("memory.swap.max").exists() {
                    set("memory.swap.max", "0".into())?;
                }
            }
        }
        Ok(group)
    }

    /// `program` started inside the group: a shell moves itself in, then
    /// becomes the program, so every byte the program takes is charged here.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg("echo $$ > \"$0\" && exec \"$@\"").arg(self.dir.join("cgroup.procs")).arg(program);
        c
    }

    /// The most memory the group held at once (v2: `memory.peak`, kernels
    /// from 5.19).
    pub fn peak_bytes(&self) -> Option<u64> {
        let name = match self.version {
            CgroupVersion::V1 => "memory.max_usage_in_bytes",
            CgroupVersion::V2 => "memory.peak",
        };
        std::fs::read_to_string(self.dir.join(name)).ok()?.trim().parse().ok()
    }

    /// How many processes the kernel killed for the group's limit.
    pub fn oom_kills(&self) -> u64 {
        let name = match self.version {
            CgroupVersion::V1 => "memory.oom_control",
            CgroupVersion::V2 => "memory.events",
        };
        let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // The kernel refuses while a process is still charged to it; the
        // test's processes were killed just before, so a few tries suffice.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("could not remove the test cgroup {}", self.dir.display());
    }
}

/// The mount point of a mountinfo line's hierarchy, when it is `version`'s
/// and holds the memory controller.
fn memory_mount(line: &str, version: CgroupVersion) -> Option<PathBuf> {
    let (before, after) = line.split_once(" - ")?;
    let point = PathBuf::from(before.split(' ').nth(4)?);
    let mut after = after.split(' ');
    let (fs_type, options) = (after.next()?, after.nth(1).unwrap_or_default());
    let ok = match version {
        CgroupVersion::V1 => fs_type == "cgroup" && options.split(',').any(|o| o == "memory"),
        CgroupVersion::V2 => fs_type == "cgroup2" && std::fs::read_to_string(point.join("cgroup.controllers")).is_ok_and(|c| c.split_whitespace().any(|c| c == "memory")),
    };
    ok.then_some(point)
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())
}
