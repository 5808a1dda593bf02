//! The local-directory store: one file per key under a root directory.

use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectMeta, Store, StoreError};

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

#[async_trait]
impl Store for DirStore {
    /// Writes to a temporary name and renames, so a reader never sees half an image
    /// and a crash leaves no partial object at the key.
    async fn put(&self, key: &str, body: Bytes, _meta: &ObjectMeta) -> Result<(), StoreError> {
        let path = self.path(key);
        let io = |what: &str, e: std::io::Error| StoreError {
            message: format!("{what} {}: {e}", path.display()),
            retry: true,
        };
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| io("creating the directory of", e))?;
        }
        let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
        tokio::fs::write(&tmp, &body)
            .await
            .map_err(|e| io("writing", e))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| io("renaming into", e))?;
        Ok(())
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
