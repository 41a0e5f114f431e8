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
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
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
}

impl Store {
    /// Opens `location`: a URL (`file:///abs/dir`, `s3://…`, `gs://…`,
    /// `az://…`) or a plain path. A local folder is created if needed.
    pub fn open(location: &str) -> Result<Self, StorageError> {
        let bad = |reason: String| StorageError::BadLocation { url: location.to_string(), reason };
        let local = |dir: std::path::PathBuf| -> Result<Self, StorageError> {
            std::fs::create_dir_all(&dir).map_err(|e| bad(format!("cannot create folder {}: {e}", dir.display())))?;
            let fs = LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(e.to_string()))?;
            Ok(Self { inner: Arc::new(fs), prefix: ObjectPath::default(), location: location.to_string() })
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
        Ok(Self { inner: Arc::from(store), prefix, location: location.to_string() })
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// The folder `prefix` inside this one (`a/b` style, no `..`).
    pub fn sub(&self, prefix: &str) -> Store {
        Store { inner: self.inner.clone(), prefix: self.path(prefix), location: format!("{}/{prefix}", self.location.trim_end_matches('/')) }
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

    pub async fn get(&self, name: &str) -> Result<Bytes, StorageError> {
        let read = |reason: String| StorageError::Read { location: self.location.clone(), name: name.to_string(), reason };
        let got = self.inner.get(&self.path(name)).await.map_err(|e| read(e.to_string()))?;
        got.bytes().await.map_err(|e| read(e.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

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
