//! Object storage behind one trait.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use cadenza_common::http::{Body, file_body};
use cadenza_common::{FileId, UploadId};
use futures_util::future::BoxFuture;
use tokio::io::AsyncSeekExt;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No object under that key.
    #[error("no such object")]
    NotFound,
    /// An object already exists under that key (creates are conditional).
    #[error("an object already exists under that key")]
    Exists,
    /// The store could not be reached or failed.
    #[error("object store I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// A remote store (S3) refused or failed the request.
    #[error("object store failed: {0}")]
    Backend(String),
}

/// A key in the store. Keys are built by the server from validated ids, never from names a
/// client sent, so they cannot escape the store's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Where a master upload lives.
    pub fn master(id: &UploadId) -> Self {
        Self(format!("masters/{id}"))
    }

    /// Where a rendition lives.
    pub fn rendition(id: &FileId) -> Self {
        Self(format!("renditions/{id}"))
    }

    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An opened object: its size and a body producing the requested bytes.
pub struct ObjectRead {
    /// Size of the whole object.
    pub size: u64,
    /// The requested part.
    pub body: Body,
}

impl std::fmt::Debug for ObjectRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectRead({} bytes)", self.size)
    }
}

/// Object storage: immutable objects written whole, read by range.
pub trait ObjectStore: Send + Sync + 'static {
    /// Stores the file at `path` under `key`, consuming the file. The object becomes visible
    /// whole or not at all, and only if no object has that key yet (`Exists` otherwise). On
    /// any error the file is left where it was, so the caller can retry.
    fn put_file<'a>(
        &'a self,
        key: &'a ObjectKey,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The object's size, or `NotFound`.
    fn size<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Streams `len` bytes from `offset` (both within the object).
    fn read<'a>(
        &'a self,
        key: &'a ObjectKey,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, Result<ObjectRead, StoreError>>;
}

/// A local directory as object store: the embedded default.
#[derive(Debug, Clone)]
pub struct LocalDirStore {
    root: PathBuf,
}

impl LocalDirStore {
    /// A store rooted at `root` (created if missing).
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        tokio::fs::create_dir_all(root.join("masters")).await?;
        tokio::fs::create_dir_all(root.join("renditions")).await?;
        Ok(Self { root })
    }

    fn path(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.as_str())
    }
}

fn not_found(e: std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StoreError::NotFound
    } else {
        StoreError::Io(e)
    }
}

impl ObjectStore for LocalDirStore {
    fn put_file<'a>(
        &'a self,
        key: &'a ObjectKey,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let dest = self.path(key);
            // The caller's file was written in the staging area on the same filesystem and
            // fsynced. A hard link publishes it atomically and, unlike rename, fails when the
            // name is taken: a conditional create. Syncing the directory makes it durable.
            tokio::fs::File::open(path).await?.sync_all().await?;
            match tokio::fs::hard_link(path, &dest).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(StoreError::Exists);
                }
                Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
                    // Staging on another filesystem: copy beside the destination, sync, link.
                    let tmp = dest.with_extension("partial");
                    tokio::fs::copy(path, &tmp).await?;
                    tokio::fs::File::open(&tmp).await?.sync_all().await?;
                    let linked = tokio::fs::hard_link(&tmp, &dest).await;
                    tokio::fs::remove_file(&tmp).await?;
                    match linked {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                            return Err(StoreError::Exists);
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
            if let Some(dir) = dest.parent() {
                tokio::fs::File::open(dir).await?.sync_all().await?;
            }
            tokio::fs::remove_file(path).await?;
            Ok(())
        })
    }

    fn size<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let meta = tokio::fs::metadata(self.path(key))
                .await
                .map_err(not_found)?;
            Ok(meta.len())
        })
    }

    fn read<'a>(
        &'a self,
        key: &'a ObjectKey,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, Result<ObjectRead, StoreError>> {
        Box::pin(async move {
            let mut file = tokio::fs::File::open(self.path(key))
                .await
                .map_err(not_found)?;
            let size = file.metadata().await?.len();
            file.seek(SeekFrom::Start(offset)).await?;
            Ok(ObjectRead {
                size,
                body: file_body(file, len),
            })
        })
    }
}
