//! The farm's storage layout, formed here and nowhere else (the
//! coordinator, the workers, farmctl and the load test all ask here):
//!
//! ```text
//! .stylefarm-storage                           the farm's id
//! inputs/<sha256 of the bytes>                 uploaded images
//! collections/<collection>/jobs/<job>/attempt-<n>/…
//!                                              what attempt n wrote:
//!                                              output.png, losses, plots,
//!                                              snapshots, checkpoints
//! ```
//!
//! Workers are handed their attempt's folder and name files relative to it;
//! [`file_name`] is what a name from a worker must be.

/// The object at the storage root that names the farm (its id), so a
/// worker can tell the farm's storage from a wrong one.
pub const FARM_MARKER: &str = ".stylefarm-storage";

/// Where an uploaded image is kept: its content address.
pub fn input(sha256_hex: &str) -> String {
    format!("inputs/{sha256_hex}")
}

/// Whether `key` is an input key as [`input`] forms them.
pub fn is_input(key: &str) -> bool {
    key.strip_prefix("inputs/").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// A collection's folder; every key a user may Fetch lies below it.
pub fn collection(collection: &str) -> String {
    format!("collections/{collection}/")
}

/// The collection whose folder holds `key`; `None` for a key outside
/// every collection's folder.
pub fn collection_of_key(key: &str) -> Option<&str> {
    let (id, _) = key.strip_prefix("collections/")?.split_once('/')?;
    (!id.is_empty()).then_some(id)
}

/// The folder of one attempt at a job.
pub fn attempt(collection: &str, job: &str, attempt: u32) -> String {
    attempt_in(&format!("collections/{collection}/jobs/{job}"), attempt)
}

/// Attempt `n`'s folder in a job's folder (as [`job_of_attempt_key`]
/// gives it).
pub fn attempt_in(job_folder: &str, n: u32) -> String {
    format!("{job_folder}/attempt-{n}")
}

/// The folder of a job (every attempt's folder is in it), from the key of
/// a file one of its attempts wrote; `None` for any other key.
pub fn job_of_attempt_key(key: &str) -> Option<&str> {
    let (job, _) = key.rsplit_once("/attempt-")?;
    (job.starts_with("collections/") && job.contains("/jobs/")).then_some(job)
}

/// The key of a file an attempt wrote, given the name its worker used.
pub fn in_attempt(attempt_folder: &str, name: &str) -> String {
    format!("{attempt_folder}/{name}")
}

/// A worker-supplied file name: one path segment of safe characters, so it
/// can only name a file inside its attempt's folder.
pub fn file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A key a user may read from `collection`: inside its folder, with no
/// empty, `.` or `..` segment.
pub fn readable(collection_id: &str, key: &str) -> bool {
    key.strip_prefix(&collection(collection_id)).is_some_and(|rest| rest.split('/').all(|p| !p.is_empty() && p != "." && p != ".."))
        && !key.contains('\0')
        && !key.contains('\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_names_cannot_leave_their_folder() {
        assert!(file_name("output.png") && file_name("ckpt_00000010.safetensors"));
        for bad in ["", ".", "..", "../output.png", "a/b", "/etc/passwd", "x\0", "a\\b"] {
            assert!(!file_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn users_read_inside_their_collection_only() {
        let key = in_attempt(&attempt("c1", "j1", 2), "output.png");
        assert_eq!(key, "collections/c1/jobs/j1/attempt-2/output.png");
        assert_eq!(job_of_attempt_key(&key), Some("collections/c1/jobs/j1"));
        assert_eq!(job_of_attempt_key("inputs/abc"), None);
        assert_eq!(collection_of_key(&in_attempt(&attempt("c1", "j1", 2), "output.png")), Some("c1"));
        assert_eq!(collection_of_key("inputs/abc"), None);
        assert_eq!(collection_of_key("collections//x"), None);
        assert!(readable("c1", &key));
        assert!(!readable("c2", &key));
        assert!(!readable("c1", "collections/c1/../c2/jobs/j/attempt-1/output.png"));
        assert!(!readable("c1", "collections/c1//x"));
        assert!(!readable("c", "collections/c1/jobs/j1/attempt-2/output.png"), "a prefix of another id is not its folder");
    }

    #[test]
    fn input_keys_are_content_addresses() {
        let k = input(&"ab".repeat(32));
        assert!(is_input(&k));
        assert!(!is_input("inputs/../farm.db") && !is_input("inputs/") && !is_input("collections/x"));
    }
}
