//! Object storage for rendered images: S3-compatible servers or a local directory.
//!
//! Keys are deterministic per job (`<prefix>/<batch_id or "adhoc">/<job_id>.<ext>`, or
//! the job's own `output_key` under the prefix), so a repeated render overwrites its
//! object instead of adding a second one.

pub mod fs;
pub mod s3;

use async_trait::async_trait;
use bytes::Bytes;

use crate::job::{ClaimedJob, ImageFormat};

pub use self::{fs::DirStore, s3::S3Store};

/// A failed store operation, with whether trying again may help.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    /// What went wrong, without secrets.
    pub message: String,
    /// Worth trying again later (server down, timeout, 5xx).
    pub retry: bool,
}

/// What an object says about itself besides its bytes.
#[derive(Debug, Clone)]
pub struct ObjectMeta {
    /// The MIME type.
    pub content_type: &'static str,
    /// The seed it was rendered with.
    pub seed: u64,
    /// The model that rendered it.
    pub model: String,
    /// The job it belongs to.
    pub job_id: String,
}

/// One object to write.
#[derive(Debug, Clone)]
pub struct PutRequest {
    /// The key.
    pub key: String,
    /// The bytes.
    pub body: Bytes,
    /// What the object says about itself.
    pub meta: ObjectMeta,
}

/// Uploads at once within one `put_many`, for stores without a cheaper way.
const PUTS_AT_ONCE: usize = 16;

/// Where images go: an S3-compatible bucket or a local directory.
#[async_trait]
pub trait Store: Send + Sync {
    /// Whether the store answers and its bucket or directory is there, for readiness.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Writes the object; returns only once the store has acknowledged it.
    async fn put(&self, key: &str, body: Bytes, meta: &ObjectMeta) -> Result<(), StoreError>;
    /// Writes several objects; one result per request, in order.
    async fn put_many(&self, puts: &[PutRequest]) -> Vec<Result<(), StoreError>> {
        let mut out = Vec::with_capacity(puts.len());
        for chunk in puts.chunks(PUTS_AT_ONCE) {
            let mut calls = Vec::with_capacity(chunk.len());
            for p in chunk {
                calls.push(self.put(&p.key, p.body.clone(), &p.meta));
            }
            out.extend(futures::future::join_all(calls).await);
        }
        out
    }
    /// The prefix every key of this store starts with ("" for none).
    fn prefix(&self) -> &str;
    /// Where a person or program finds the object.
    fn url(&self, key: &str) -> String;
    /// Whether [`Store::share_url`] makes a URL that works for anyone holding it
    /// (presigned), rather than a location only this machine can read.
    fn presigns(&self) -> bool {
        false
    }
    /// A URL that lets anyone holding it read the object until `expires` (presigned
    /// on S3); stores without access control return `url`.
    async fn share_url(
        &self,
        key: &str,
        _expires: std::time::Duration,
    ) -> Result<String, StoreError> {
        Ok(self.url(key))
    }
    /// Copies the object at `key` into `out` and returns its length. An object over
    /// `cap` bytes is refused (by its declared size where the store knows it, else as
    /// it arrives), so a reader never holds more than it allowed for.
    async fn read_into(
        &self,
        key: &str,
        cap: u64,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, StoreError>;
}

/// The error of an object over a reader's cap.
pub(crate) fn over_cap(url: &str, cap: u64) -> StoreError {
    StoreError {
        message: format!("`{url}` is over the limit of {cap} bytes"),
        retry: false,
    }
}

/// Where a store location points: a bucket (and a key or prefix in it) on an
/// S3-compatible server, or a local path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location<'a> {
    /// An object, or a prefix, in a bucket.
    S3 {
        /// The bucket.
        bucket: &'a str,
        /// The key or prefix in it ("" for none).
        key: &'a str,
    },
    /// A local path.
    Local(&'a str),
}

impl<'a> Location<'a> {
    /// Reads `s3://bucket/key` or a path.
    pub fn parse(location: &'a str) -> Result<Self, StoreError> {
        let Some(rest) = location.strip_prefix("s3://") else {
            return Ok(Location::Local(location));
        };
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError {
                message: format!("`{location}` names no bucket: use s3://bucket/key"),
                retry: false,
            });
        }
        Ok(Location::S3 { bucket, key })
    }

    /// Whether this is a local path rather than a bucket.
    pub fn is_local(&self) -> bool {
        matches!(self, Location::Local(_))
    }
}

/// The key a job's image is stored under.
pub fn object_key(prefix: &str, job: &ClaimedJob) -> String {
    let ext = job.spec.format.extension();
    let relative = match &job.spec.output_key {
        Some(key) if has_extension(key, job.spec.format) => key.clone(),
        Some(key) => format!("{key}.{ext}"),
        None => {
            let batch = job
                .batch_id
                .map(|b| b.to_string())
                .unwrap_or_else(|| "adhoc".into());
            format!("{batch}/{}.{ext}", job.id)
        }
    };
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        relative
    } else {
        format!("{prefix}/{relative}")
    }
}

fn has_extension(key: &str, format: ImageFormat) -> bool {
    let lower = key.to_ascii_lowercase();
    match format {
        ImageFormat::Jpeg => lower.ends_with(".jpg") || lower.ends_with(".jpeg"),
        other => lower.ends_with(&format!(".{}", other.extension())),
    }
}

/// Opens the store named by `RENDERQ_STORE`: `s3://bucket/prefix` or a directory.
pub async fn open(location: &str) -> Result<Box<dyn Store>, StoreError> {
    Ok(match Location::parse(location)? {
        Location::S3 { bucket, key } => Box::new(S3Store::from_env(bucket, key).await),
        Location::Local(dir) => Box::new(DirStore::new(dir)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobId, JobSpec, Limits};

    fn job(extra: &str) -> ClaimedJob {
        let spec =
            JobSpec::parse(&format!(r#"{{"prompt":"p"{extra}}}"#), &Limits::default()).unwrap();
        ClaimedJob {
            id: JobId::generate(),
            batch_id: None,
            attempt: 1,
            seed: 1,
            spec,
            submitted_at: None,
        }
    }

    #[test]
    fn keys_are_deterministic_and_under_the_prefix() {
        let j = job("");
        assert_eq!(object_key("out/", &j), format!("out/adhoc/{}.png", j.id));
        assert_eq!(object_key("out", &j), object_key("out", &j));
        let j = job(r#","output_key":"sku/1","format":"jpeg""#);
        assert_eq!(object_key("", &j), "sku/1.jpg");
        let j = job(r#","output_key":"sku/1.webp","format":"webp""#);
        assert_eq!(object_key("p", &j), "p/sku/1.webp");
    }
}
