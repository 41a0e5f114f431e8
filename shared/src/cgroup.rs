//! The memory this process may still take before its cgroup's limit: what a
//! worker in a Kubernetes pod (or any container) has, which `/proc/meminfo`
//! does not say (it shows the host's memory, so a worker that planned from
//! it rendered untiled and was OOM-killed).
//!
//! Both cgroup versions, found the way the kernel exposes them:
//! `/proc/self/cgroup` names the process's group in each hierarchy and
//! `/proc/self/mountinfo` says where each hierarchy is mounted (and from
//! which of its folders, as a container sees only its own subtree). Every
//! level from the process's group up to the mount may set a limit, and the
//! tightest one binds: the headroom is the least, over the levels with a
//! limit, of the limit less that level's working set (usage less inactive
//! page cache, which the kernel reclaims before it kills; kubelet counts the
//! same).

use std::path::{Path, PathBuf};

/// v1 reports "no limit" as a huge page-aligned number (2^63 − 4096 on
/// x86-64): anything above this is no limit.
const UNLIMITED_V1: u64 = 1 << 60;

/// The bytes the process may still allocate before a cgroup limit stops
/// it; `None` when no cgroup around it sets a memory limit (or none can be
/// read).
pub fn headroom() -> Option<u64> {
    let groups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    headroom_in(&groups, &mounts)
}

/// [`headroom`] from the two files' texts (the folders they name are read
/// from the file system).
pub fn headroom_in(groups: &str, mounts: &str) -> Option<u64> {
    memory_groups(groups, mounts).into_iter().filter_map(|g| g.headroom()).min()
}

/// One hierarchy's view of the process: the folder of its group and the
/// folder where the hierarchy is mounted (the walk up stops there).
#[derive(Debug, PartialEq)]
struct Group {
    version: Version,
    dir: PathBuf,
    mount: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Version {
    V1,
    V2,
}

impl Group {
    /// The least headroom over the levels from the group up to the mount.
    fn headroom(&self) -> Option<u64> {
        let mut least: Option<u64> = None;
        let mut dir = Some(self.dir.as_path());
        while let Some(d) = dir {
            if let Some(room) = level_headroom(self.version, d) {
                least = Some(least.map_or(room, |l| l.min(room)));
            }
            if d == self.mount {
                break;
            }
            dir = d.parent().filter(|p| p.starts_with(&self.mount));
        }
        least
    }
}

/// One level's limit less its working set; `None` where it sets no limit.
fn level_headroom(version: Version, dir: &Path) -> Option<u64> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let number = |name: &str| read(name).and_then(|s| s.trim().parse::<u64>().ok());
    let (limit, usage, inactive_key) = match version {
        // "max" (no limit) does not parse, and so is no limit.
        Version::V2 => (number("memory.max")?, number("memory.current")?, "inactive_file"),
        Version::V1 => (number("memory.limit_in_bytes").filter(|&l| l < UNLIMITED_V1)?, number("memory.usage_in_bytes")?, "total_inactive_file"),
    };
    let inactive = read("memory.stat").and_then(|stat| stat_value(&stat, inactive_key).or_else(|| stat_value(&stat, "inactive_file"))).unwrap_or(0);
    Some(limit.saturating_sub(usage.saturating_sub(inactive)))
}

/// A `key value` line of `memory.stat`.
fn stat_value(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The memory hierarchies this process is in: the v2 group when its mount
/// has the memory controller, the v1 `memory` hierarchy's group.
fn memory_groups(groups: &str, mounts: &str) -> Vec<Group> {
    let mut found = Vec::new();
    for line in groups.lines() {
        // hierarchy-id:controllers:path
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let version = match controllers {
            "" => Version::V2,
            c if c.split(',').any(|c| c == "memory") => Version::V1,
            _ => continue,
        };
        for mount in mounts.lines().filter_map(Mount::parse).filter(|m| m.holds(version)) {
            if version == Version::V2 && !has_memory_controller(&mount.point) {
                continue;
            }
            found.push(Group { version, dir: mount.folder_of(path), mount: mount.point.clone() });
        }
    }
    found
}

/// A v2 mount offers memory limits only where its root lists the controller.
fn has_memory_controller(point: &Path) -> bool {
    std::fs::read_to_string(point.join("cgroup.controllers")).is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
}

/// A cgroup file system's line of `/proc/self/mountinfo`.
struct Mount {
    /// The hierarchy's folder mounted there (`/` unless a container sees
    /// only its subtree).
    root: String,
    point: PathBuf,
    fs_type: String,
    options: String,
}

impl Mount {
    /// `id parent major:minor root point options [optional…] - type source super-options`
    fn parse(line: &str) -> Option<Mount> {
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        let mut after = after.split(' ');
        let fs_type = after.next()?.to_string();
        let options = after.nth(1).unwrap_or_default().to_string();
        Some(Mount { root: unescape(fields.get(3)?), point: PathBuf::from(unescape(fields.get(4)?)), fs_type, options })
    }

    fn holds(&self, version: Version) -> bool {
        match version {
            Version::V2 => self.fs_type == "cgroup2",
            Version::V1 => self.fs_type == "cgroup" && self.options.split(',').any(|o| o == "memory"),
        }
    }

    /// Where the group at hierarchy `path` is under this mount. A path
    /// outside the mounted subtree (a cgroup namespace shows `/..`-style
    /// paths) is taken to be the mount itself.
    fn folder_of(&self, path: &str) -> PathBuf {
        let root = self.root.trim_end_matches('/');
        match path.strip_prefix(root) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => self.point.join(rest.trim_start_matches('/')),
            _ => self.point.clone(),
        }
    }
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(c as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// Writes `files` (name → text) into `dir`, creating it.
    fn level(dir: &Path, files: &[(&str, String)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    fn v1(limit: u64, usage: u64, inactive: u64) -> Vec<(&'static str, String)> {
        vec![
            ("memory.limit_in_bytes", format!("{limit}\n")),
            ("memory.usage_in_bytes", format!("{usage}\n")),
            ("memory.stat", format!("cache 1\ninactive_file 7\ntotal_inactive_file {inactive}\n")),
        ]
    }

    fn v2(max: &str, current: u64, inactive: u64) -> Vec<(&'static str, String)> {
        vec![("memory.max", format!("{max}\n")), ("memory.current", format!("{current}\n")), ("memory.stat", format!("anon 5\ninactive_file {inactive}\n"))]
    }

    fn mountinfo(lines: &[(&str, &Path, &str, &str)]) -> String {
        lines.iter().enumerate().map(|(i, (root, point, ty, opts))| format!("{} 1 0:{i} {root} {} rw,relatime - {ty} {ty} {opts}\n", 30 + i, point.display())).collect()
    }

    #[test]
    fn v1_takes_the_tightest_limit_on_the_way_up_less_the_working_set() {
        let t = tempfile::tempdir().unwrap();
        let mount = t.path().join("memory");
        level(&mount, &v1(u64::MAX - 4095, 20 * GIB, 0));
        level(&mount.join("kubepods"), &v1(8 * GIB, 5 * GIB, GIB));
        level(&mount.join("kubepods/pod1"), &v1(9_223_372_036_854_771_712, 3 * GIB, 0));
        let mounts = mountinfo(&[("/", &mount, "cgroup", "rw,memory"), ("/", &t.path().join("cpu"), "cgroup", "rw,cpu")]);
        let groups = "5:cpu:/kubepods/pod1\n4:memory:/kubepods/pod1\n0::/\n";
        // The pod sets none; its parent's 8 GiB less 5 − 1 GiB of working set.
        assert_eq!(headroom_in(groups, &mounts), Some(4 * GIB));
        // A tighter level below wins.
        level(&mount.join("kubepods/pod1"), &v1(3 * GIB + GIB / 2, 3 * GIB, 0));
        assert_eq!(headroom_in(groups, &mounts), Some(GIB / 2));
    }

    #[test]
    fn v2_reads_max_and_a_container_sees_its_own_subtree() {
        let t = tempfile::tempdir().unwrap();
        let mount = t.path().join("unified");
        level(&mount, &[("cgroup.controllers", "cpu memory pids\n".into())]);
        level(&mount, &v2("max", 9 * GIB, 0));
        level(&mount.join("job"), &v2(&(5 * GIB / 2).to_string(), GIB, GIB / 2));
        // The container's mount is the hierarchy's /pods/abc; the process is
        // in /pods/abc/job.
        let mounts = mountinfo(&[("/pods/abc", &mount, "cgroup2", "rw")]);
        assert_eq!(headroom_in("0::/pods/abc/job\n", &mounts), Some(2 * GIB));
        // A namespaced path outside the mounted subtree: the mount itself
        // (which sets no limit here).
        assert_eq!(headroom_in("0::/../elsewhere\n", &mounts), None);
    }

    #[test]
    fn no_limit_and_no_memory_controller_are_none() {
        let t = tempfile::tempdir().unwrap();
        let mount = t.path().join("unified");
        level(&mount, &[("cgroup.controllers", "cpu pids\n".into())]);
        level(&mount.join("job"), &v2("1073741824", 0, 0));
        let mounts = mountinfo(&[("/", &mount, "cgroup2", "rw")]);
        assert_eq!(headroom_in("0::/job\n", &mounts), None, "a v2 mount without the memory controller limits nothing");
        let v1_mount = t.path().join("memory");
        level(&v1_mount, &v1(u64::MAX - 4095, 3 * GIB, 0));
        let mounts = mountinfo(&[("/", &v1_mount, "cgroup", "rw,memory")]);
        assert_eq!(headroom_in("4:memory:/\n", &mounts), None, "v1's 'unlimited' is no limit");
        assert_eq!(headroom_in("", "garbage\n"), None);
    }

    #[test]
    fn usage_above_the_limit_leaves_nothing_and_escapes_are_read() {
        let t = tempfile::tempdir().unwrap();
        let mount = t.path().join("mem ory");
        level(&mount.join("g"), &v1(GIB, 2 * GIB, 0));
        let escaped = mount.display().to_string().replace(' ', "\\040");
        let mounts = format!("30 1 0:1 / {escaped} rw - cgroup cgroup rw,memory\n");
        assert_eq!(headroom_in("4:memory:/g\n", &mounts), Some(0));
    }

    #[test]
    fn this_process_reads_without_error() {
        // Whatever this machine's cgroups say, reading them must not panic,
        // and a limit found is below 2^60.
        assert!(headroom().is_none_or(|h| h < UNLIMITED_V1));
    }
}
