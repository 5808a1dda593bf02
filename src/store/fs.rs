//! The local-directory store: one file per key under a root directory.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectMeta, PutRequest, Store, StoreError};

pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirStore { root: root.into() }
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

/// Suffixes of temporary files: unique within the process, no syscall to make.
static TMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let n = TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    let written = std::fs::write(&tmp, body).or_else(|e| {
        // The directory is made only when missing: one syscall less per image.
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(e);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&tmp, body)
    });
    written
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

#[async_trait]
impl Store for DirStore {
    /// Writes to a temporary name and renames, so a reader never sees half an image
    /// and a crash leaves no partial object at the key. One trip to the blocking pool
    /// per image.
    async fn put(&self, key: &str, body: Bytes, _meta: &ObjectMeta) -> Result<(), StoreError> {
        let path = self.path(key);
        let target = path.clone();
        let result = tokio::task::spawn_blocking(move || write_atomically(&target, &body)).await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError {
                message: format!("writing {}: {e}", path.display()),
                retry: true,
            }),
            Err(e) => Err(StoreError {
                message: format!("writing {}: {e}", path.display()),
                retry: true,
            }),
        }
    }

    /// All writes of a chunk in one trip to the blocking pool: a thread hand-off per
    /// image cost more than the write itself.
    async fn put_many(&self, puts: &[PutRequest]) -> Vec<Result<(), StoreError>> {
        let jobs: Vec<(PathBuf, Bytes)> = puts
            .iter()
            .map(|p| (self.path(&p.key), p.body.clone()))
            .collect();
        let n = jobs.len();
        let written = tokio::task::spawn_blocking(move || {
            jobs.iter()
                .map(|(path, body)| {
                    write_atomically(path, body).map_err(|e| StoreError {
                        message: format!("writing {}: {e}", path.display()),
                        retry: true,
                    })
                })
                .collect::<Vec<_>>()
        })
        .await;
        written.unwrap_or_else(|e| {
            (0..n)
                .map(|_| {
                    Err(StoreError {
                        message: format!("writer panicked: {e}"),
                        retry: true,
                    })
                })
                .collect()
        })
    }

    fn prefix(&self) -> &str {
        ""
    }

    fn url(&self, key: &str) -> String {
        let path = self.path(key);
        let abs = std::path::absolute(&path).unwrap_or(path);
        format!("file://{}", abs.display())
    }
}
