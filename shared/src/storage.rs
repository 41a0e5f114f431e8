//! Shared storage through `object_store`: a local folder by default,
//! S3 (`s3://bucket/prefix`), GCS (`gs://…`) or Azure (`az://…`) by URL,
//! configured from the usual environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_ENDPOINT`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, …).
//!
//! Every write is a single `put`, which object stores make atomic (the
//! local store writes a temporary file and renames it).

use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage location `{url}` is not usable: {reason}")]
    BadLocation { url: String, reason: String },
    #[error("cannot write {name} to {location}: {reason}")]
    Write { location: String, name: String, reason: String },
    #[error("cannot read {name} from {location}: {reason}")]
    Read { location: String, name: String, reason: String },
    #[error("cannot list {location}: {reason}")]
    List { location: String, reason: String },
}

/// An object's bytes as they arrive.
pub type ByteStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<Bytes, StorageError>> + Send>>;

/// A folder in some object store.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// What the user gave, for messages.
    location: String,
    /// A local store's real root folder (symbolic links resolved): reads
    /// by [`Store::get_confined`] stay inside it joined with `prefix`.
    local_root: Option<std::path::PathBuf>,
}

/// Why [`Store::get_confined`] read nothing. Its messages name the key the
/// caller gave, never a path of the machine.
#[derive(Debug, thiserror::Error)]
pub enum ConfinedReadError {
    /// No such object, or (locally) a path that leaves the folder through a
    /// link, or something other than a regular file: all answered alike,
    /// so a caller learns nothing of what lies outside.
    #[error("`{0}` does not exist (or is not a regular file inside the location)")]
    Missing(String),
    #[error("`{name}` is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { name: String, size: u64, limit: u64 },
    #[error("`{name}` was not read within {seconds} s")]
    TimedOut { name: String, seconds: u64 },
    /// The storage itself failed (details for the log, not the caller).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Store {
    /// Opens `location`: a URL (`file:///abs/dir`, `s3://…`, `gs://…`,
    /// `az://…`) or a plain path. A local folder is created if needed.
    pub fn open(location: &str) -> Result<Self, StorageError> {
        let bad = |reason: String| StorageError::BadLocation { url: location.to_string(), reason };
        let local = |dir: std::path::PathBuf| -> Result<Self, StorageError> {
            std::fs::create_dir_all(&dir).map_err(|e| bad(format!("cannot create folder {}: {e}", dir.display())))?;
            let fs = LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(e.to_string()))?;
            let root = std::fs::canonicalize(&dir).map_err(|e| bad(format!("cannot resolve folder {}: {e}", dir.display())))?;
            Ok(Self { inner: Arc::new(fs), prefix: ObjectPath::default(), location: location.to_string(), local_root: Some(root) })
        };
        if !location.contains("://") {
            return local(std::path::PathBuf::from(location));
        }
        let url = Url::parse(location).map_err(|e| bad(e.to_string()))?;
        if url.scheme() == "file" {
            let dir = url.to_file_path().map_err(|_| bad("not an absolute local path".into()))?;
            return local(dir);
        }
        let (store, prefix) = object_store::parse_url_opts(&url, std::env::vars()).map_err(|e| bad(e.to_string()))?;
        Ok(Self { inner: Arc::from(store), prefix, location: location.to_string(), local_root: None })
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// The folder `prefix` inside this one (`a/b` style, no `..`).
    pub fn sub(&self, prefix: &str) -> Store {
        Store {
            inner: self.inner.clone(),
            prefix: self.path(prefix),
            location: format!("{}/{prefix}", self.location.trim_end_matches('/')),
            local_root: self.local_root.clone(),
        }
    }

    /// `name` may contain `/` (a key below this folder); empty, `.` and
    /// `..` parts are dropped, so a key can never leave the folder.
    fn path(&self, name: &str) -> ObjectPath {
        name.split('/').filter(|s| !s.is_empty() && *s != "." && *s != "..").fold(self.prefix.clone(), |p, part| p.join(part))
    }

    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.inner.put(&self.path(name), PutPayload::from(bytes)).await.map_err(|e| StorageError::Write {
            location: self.location.clone(),
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        Ok(())
    }

    /// Writes `name` only if nothing is there yet: `Ok(true)` if this call
    /// wrote it, `Ok(false)` if it was already there (left as it was). A
    /// store that cannot write conditionally is written plainly.
    pub async fn put_new(&self, name: &str, bytes: Vec<u8>) -> Result<bool, StorageError> {
        let create = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.inner.put_opts(&self.path(name), PutPayload::from(bytes.clone()), create).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(object_store::Error::NotImplemented { .. }) => self.put(name, bytes).await.map(|()| true),
            Err(e) => Err(StorageError::Write { location: self.location.clone(), name: name.to_string(), reason: e.to_string() }),
        }
    }

    /// The object's bytes, or `None` when there is no such object (any
    /// other failure is an error: "could not read" is not "absent").
    pub async fn get_if_exists(&self, name: &str) -> Result<Option<Bytes>, StorageError> {
        let read = |reason: String| StorageError::Read { location: self.location.clone(), name: name.to_string(), reason };
        match self.inner.get(&self.path(name)).await {
            Ok(got) => got.bytes().await.map(Some).map_err(|e| read(e.to_string())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(read(e.to_string())),
        }
    }

    pub async fn get(&self, name: &str) -> Result<Bytes, StorageError> {
        let read = |reason: String| StorageError::Read { location: self.location.clone(), name: name.to_string(), reason };
        let got = self.inner.get(&self.path(name)).await.map_err(|e| read(e.to_string()))?;
        got.bytes().await.map_err(|e| read(e.to_string()))
    }

    /// Reads an object a stranger named (an input under an operator's
    /// prefix): at most `limit` bytes, within `patience`. In a local folder
    /// the object must be a regular file whose real path stays inside the
    /// folder: a symbolic link that leads out, a FIFO or a device is
    /// [`ConfinedReadError::Missing`], exactly like nothing at all, and is
    /// never opened for reading (a FIFO would block the thread forever).
    pub async fn get_confined(&self, name: &str, limit: u64, patience: std::time::Duration) -> Result<Bytes, ConfinedReadError> {
        let timed_out = || ConfinedReadError::TimedOut { name: name.to_string(), seconds: patience.as_secs() };
        match &self.local_root {
            Some(root) => {
                let (inside, path, owned) = (root.join(self.prefix.as_ref()), root.join(self.path(name).as_ref()), name.to_string());
                let read = tokio::task::spawn_blocking(move || read_confined(&inside, &path, &owned, limit));
                match tokio::time::timeout(patience, read).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(e)) => Err(StorageError::Read { location: self.location.clone(), name: name.to_string(), reason: e.to_string() }.into()),
                    Err(_) => Err(timed_out()),
                }
            }
            None => {
                let read = async {
                    match self.size(name).await? {
                        None => Err(ConfinedReadError::Missing(name.to_string())),
                        Some(size) if size > limit => Err(ConfinedReadError::TooLarge { name: name.to_string(), size, limit }),
                        Some(_) => Ok(self.get(name).await?),
                    }
                };
                tokio::time::timeout(patience, read).await.map_err(|_| timed_out())?
            }
        }
    }

    /// Reads `name` as a stream of byte chunks, without holding it whole;
    /// returns its size first.
    pub async fn get_stream(&self, name: &str) -> Result<(u64, ByteStream), StorageError> {
        let (location, owned) = (self.location.clone(), name.to_string());
        let read = move |reason: String| StorageError::Read { location: location.clone(), name: owned.clone(), reason };
        let got = self.inner.get(&self.path(name)).await.map_err(|e| read(e.to_string()))?;
        let size = got.meta.size;
        let stream = tokio_stream::StreamExt::map(got.into_stream(), move |chunk| chunk.map_err(|e| read(e.to_string())));
        Ok((size, Box::pin(stream)))
    }

    /// Every object below `prefix` (nested too): its name relative to
    /// `prefix` and its size, sorted by name.
    pub async fn list_all(&self, prefix: &str) -> Result<Vec<(String, u64)>, StorageError> {
        let base = self.path(prefix);
        let list_err = |reason: String| StorageError::List { location: format!("{}/{prefix}", self.location), reason };
        let mut objects = Vec::new();
        let mut stream = self.inner.list(Some(&base));
        while let Some(meta) = tokio_stream::StreamExt::next(&mut stream).await {
            let meta = meta.map_err(|e| list_err(e.to_string()))?;
            let full = meta.location.as_ref();
            let relative = full.strip_prefix(base.as_ref()).unwrap_or(full).trim_start_matches('/').to_string();
            objects.push((relative, meta.size));
        }
        objects.sort();
        Ok(objects)
    }

    /// The size of `name` in bytes, without reading it; `None` when there
    /// is no such object.
    pub async fn size(&self, name: &str) -> Result<Option<u64>, StorageError> {
        match self.inner.head(&self.path(name)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StorageError::Read { location: self.location.clone(), name: name.to_string(), reason: e.to_string() }),
        }
    }

    pub async fn delete(&self, name: &str) -> Result<(), StorageError> {
        self.inner.delete(&self.path(name)).await.map_err(|e| StorageError::Write {
            location: self.location.clone(),
            name: name.to_string(),
            reason: e.to_string(),
        })
    }

    /// Names of the objects directly in this folder.
    pub async fn list(&self) -> Result<Vec<String>, StorageError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let listing = self
            .inner
            .list_with_delimiter(prefix)
            .await
            .map_err(|e| StorageError::List { location: self.location.clone(), reason: e.to_string() })?;
        Ok(listing.objects.into_iter().filter_map(|o| o.location.filename().map(str::to_string)).collect())
    }

    /// Proves the location takes writes: puts and deletes a probe object.
    pub async fn check_writable(&self) -> Result<(), StorageError> {
        // Unique per call: several workers (and the coordinator) of one
        // process (`farmctl up`) probe the same storage at once.
        static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!(".probe-{}-{n}", std::process::id());
        self.put(&name, b"probe".to_vec()).await?;
        self.delete(&name).await
    }
}

/// [`Store::get_confined`] in a local folder, on a blocking thread: the
/// real path of `path` must stay under `inside`; the file is opened without following
/// a last link and without blocking (a FIFO swapped in after the check
/// still cannot hang the open), then must be a regular file of at most
/// `limit` bytes by its own descriptor.
fn read_confined(inside: &std::path::Path, path: &std::path::Path, name: &str, limit: u64) -> Result<Bytes, ConfinedReadError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let missing = || ConfinedReadError::Missing(name.to_string());
    let real = std::fs::canonicalize(path).map_err(|_| missing())?;
    if !real.starts_with(inside) {
        return Err(missing());
    }
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&real).map_err(|_| missing())?;
    let meta = file.metadata().map_err(|_| missing())?;
    if !meta.is_file() {
        return Err(missing());
    }
    if meta.len() > limit {
        return Err(ConfinedReadError::TooLarge { name: name.to_string(), size: meta.len(), limit });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|_| missing())?;
    if bytes.len() as u64 > limit {
        return Err(ConfinedReadError::TooLarge { name: name.to_string(), size: bytes.len() as u64, limit });
    }
    Ok(Bytes::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_new_writes_once_and_absent_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().to_string_lossy()).unwrap();
        assert_eq!(store.get_if_exists("marker").await.unwrap(), None);
        assert!(store.put_new("marker", b"first".to_vec()).await.unwrap());
        assert!(!store.put_new("marker", b"second".to_vec()).await.unwrap(), "the second write finds the first");
        assert_eq!(store.get_if_exists("marker").await.unwrap().as_deref(), Some(&b"first"[..]));
    }

    #[tokio::test]
    async fn confined_reads_stay_inside_and_open_only_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("photos");
        std::fs::create_dir_all(inside.join("sub")).unwrap();
        std::fs::write(inside.join("sub/a.png"), b"inside").unwrap();
        std::fs::write(dir.path().join("secret"), b"outside").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), inside.join("leak")).unwrap();
        std::os::unix::fs::symlink(inside.join("sub/a.png"), inside.join("alias.png")).unwrap();
        let fifo = std::ffi::CString::new(inside.join("fifo").to_string_lossy().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let store = Store::open(&inside.to_string_lossy()).unwrap();
        let patience = std::time::Duration::from_secs(5);
        assert_eq!(&store.get_confined("sub/a.png", 100, patience).await.unwrap()[..], b"inside");
        assert_eq!(&store.get_confined("alias.png", 100, patience).await.unwrap()[..], b"inside", "a link that stays inside is fine");
        let start = std::time::Instant::now();
        for name in ["leak", "fifo", "sub", "nothing.png"] {
            let e = store.get_confined(name, 100, patience).await.unwrap_err();
            assert!(matches!(e, ConfinedReadError::Missing(_)), "{name}: {e}");
            assert!(!e.to_string().contains(&*dir.path().to_string_lossy()), "no host path in `{e}`");
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(2), "the FIFO was never waited on");
        assert!(matches!(store.get_confined("sub/a.png", 3, patience).await, Err(ConfinedReadError::TooLarge { size: 6, .. })));
        let sub = store.sub("sub");
        assert_eq!(&sub.get_confined("a.png", 100, patience).await.unwrap()[..], b"inside");
        assert!(matches!(sub.get_confined("../alias.png", 100, patience).await, Err(ConfinedReadError::Missing(_))), "`..` is dropped, not followed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn probes_of_one_process_at_once_do_not_trip_each_other() {
        // `farmctl up`: the coordinator and every worker probe one storage
        // from one process at the same moment.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().to_string_lossy()).unwrap();
        let probes: Vec<_> = (0..16).map(|_| {
            let s = store.clone();
            tokio::spawn(async move { s.check_writable().await })
        }).collect();
        for p in probes {
            p.await.unwrap().unwrap();
        }
        assert!(store.list().await.unwrap().is_empty(), "every probe is removed");
    }

    #[tokio::test]
    async fn keys_with_slashes_nest_and_cannot_escape() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("root").to_string_lossy()).unwrap();
        store.put("a/b/c.txt", b"hi".to_vec()).await.unwrap();
        assert!(dir.path().join("root/a/b/c.txt").exists());
        assert_eq!(&store.sub("a").get("b/c.txt").await.unwrap()[..], b"hi");
        assert_eq!(store.sub("a/b").list().await.unwrap(), vec!["c.txt".to_string()]);
        assert_eq!(store.size("a/b/c.txt").await.unwrap(), Some(2));
        assert_eq!(store.size("a/b/none.txt").await.unwrap(), None);
        store.put("a/tb/e.bin", b"xyz".to_vec()).await.unwrap();
        assert_eq!(store.list_all("a").await.unwrap(), vec![("b/c.txt".to_string(), 2), ("tb/e.bin".to_string(), 3)]);
        let (size, mut chunks) = store.get_stream("a/tb/e.bin").await.unwrap();
        let mut got = Vec::new();
        while let Some(c) = tokio_stream::StreamExt::next(&mut chunks).await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!((size, got.as_slice()), (3, &b"xyz"[..]));
        store.put("../../escape.txt", b"x".to_vec()).await.unwrap();
        assert!(!dir.path().join("escape.txt").exists() && dir.path().join("root/escape.txt").exists());
        let err = Store::open("s3://").unwrap_err().to_string();
        assert!(err.contains("s3://"), "{err}");
    }
}
