//! The local-directory store: one file per key under a root directory.
//!
//! Keys come back from the record, which SQL users and raw producers can write, so
//! they are not trusted: a key must be relative with no `.`/`..` or empty parts, and
//! directories are opened one component at a time from the root without following
//! symbolic links, so nothing planted inside the root leads a write outside it.

use std::{
    collections::HashMap,
    ffi::OsStr,
    io::Write,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use bytes::Bytes;
use rustix::{
    fs::{AtFlags, CWD, Mode, OFlags, mkdirat, openat, renameat, unlinkat},
    io::Errno,
};

use super::{ObjectMeta, PutRequest, Store, StoreError};

/// Images as files under a root directory.
pub struct DirStore {
    root: PathBuf,
    turns: Arc<Turns>,
}

/// One lock per directory written to lately. The kernel takes a directory's lock for
/// every create and rename in it, and concurrent writers spun on it; writers into one
/// directory take turns here instead, each holding its turn for a run of files (a
/// drain was ~7% faster).
#[derive(Default)]
struct Turns(Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>);

/// Directories whose locks are kept at most; past this the map starts again (a worker
/// writes to few directories at a time: one per batch).
const MAX_TURNS: usize = 64;

impl DirStore {
    /// A store writing under `root` (made on the first write when missing).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirStore {
            root: root.into(),
            turns: Arc::default(),
        }
    }

    /// The file a key is stored in.
    pub fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

impl Turns {
    fn of(&self, dir: &Path) -> Arc<Mutex<()>> {
        let mut turns = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(turn) = turns.get(dir) {
            return turn.clone();
        }
        if turns.len() >= MAX_TURNS {
            turns.clear();
        }
        let turn = Arc::new(Mutex::new(()));
        turns.insert(dir.to_path_buf(), turn.clone());
        turn
    }
}

fn split(path: &Path) -> std::io::Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "an object key needs a file name",
        )),
    }
}

/// Writes objects, those of one directory in one run through one handle of it, opened
/// for the run: the kernel walks the directory's path once per run, not twice per
/// file. The handle is not kept past the run, so a directory moved or replaced later
/// is never written through a stale handle. Results in input order.
fn write_many(root: &Path, turns: &Turns, files: &[(PathBuf, Bytes)]) -> Vec<std::io::Result<()>> {
    let mut results: Vec<Option<std::io::Result<()>>> = files.iter().map(|_| None).collect();
    let mut by_dir: Vec<(&Path, Vec<(usize, &OsStr)>)> = Vec::new();
    for (i, (path, _)) in files.iter().enumerate() {
        match split(path) {
            Ok((dir, name)) => match by_dir.iter_mut().find(|(d, _)| *d == dir) {
                Some((_, names)) => names.push((i, name)),
                None => by_dir.push((dir, vec![(i, name)])),
            },
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    for (dir, names) in by_dir {
        let turn = turns.of(dir);
        let _turn = turn.lock().unwrap_or_else(|e| e.into_inner());
        let mut handle = None;
        for (i, name) in names {
            results[i] = Some(write_one(&mut handle, root, dir, name, &files[i].1));
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every file has a result"))
        .collect()
}

/// Writes one object: to a temporary name in its directory, then renamed over the
/// key, so a reader never sees half an image and a crash leaves no partial object at
/// the key. Opens the run's directory handle on first use.
fn write_one(
    handle: &mut Option<OwnedFd>,
    root: &Path,
    dir: &Path,
    name: &OsStr,
    body: &[u8],
) -> std::io::Result<()> {
    let fd = match handle {
        Some(fd) => fd,
        None => handle.insert(open_dir(root, dir)?),
    };
    match write_at(fd, name, body) {
        // The directory was removed during the run: make it again, once.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let fd = handle.insert(open_dir(root, dir)?);
            write_at(fd, name, body)
        }
        other => other,
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);

/// A handle of `root/dir`, made when missing: the root as configured (it may be a
/// link the operator made), then each component of `dir` opened from its parent's
/// handle without following a symbolic link.
fn open_dir(root: &Path, dir: &Path) -> std::io::Result<OwnedFd> {
    let mut fd = match openat(CWD, root, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => {
            std::fs::create_dir_all(root)?;
            openat(CWD, root, DIR_FLAGS, Mode::empty())?
        }
        Err(e) => return Err(e.into()),
    };
    for part in dir.components() {
        let std::path::Component::Normal(name) = part else {
            return Err(bad_key(dir));
        };
        let flags = DIR_FLAGS | OFlags::NOFOLLOW;
        fd = match openat(&fd, name, flags, Mode::empty()) {
            Ok(next) => next,
            Err(Errno::NOENT) => {
                match mkdirat(&fd, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                openat(&fd, name, flags, Mode::empty())?
            }
            Err(Errno::LOOP | Errno::NOTDIR) => {
                return Err(std::io::Error::other(format!(
                    "`{}` is not a directory (the store follows no symbolic links)",
                    name.to_string_lossy()
                )));
            }
            Err(e) => return Err(e.into()),
        };
    }
    Ok(fd)
}

fn bad_key(key: &Path) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("`{}` is not a key under the store's root", key.display()),
    )
}

/// Whether `key` names a path inside the root: relative, every part a plain name.
pub(crate) fn is_safe_key(key: &str) -> bool {
    !key.is_empty()
        && !key.contains('\0')
        && key
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// Suffixes of temporary files: unique within the process, no syscall to make.
static TMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// open, write, close and rename, all relative to the directory's handle.
fn write_at(dir: &OwnedFd, name: &OsStr, body: &[u8]) -> std::io::Result<()> {
    let n = TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = name.to_os_string();
    tmp.push(format!(".tmp-{}-{n}", std::process::id()));
    // A new file only: never opened through a link someone left at that name.
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let file = openat(dir, tmp.as_os_str(), flags, Mode::from_raw_mode(0o644))?;
    let written = std::fs::File::from(file)
        .write_all(body)
        .and_then(|()| Ok(renameat(dir, tmp.as_os_str(), dir, name)?));
    written.inspect_err(|_| {
        let _ = unlinkat(dir, tmp.as_os_str(), AtFlags::empty());
    })
}

#[async_trait]
impl Store for DirStore {
    /// The root is made on the first write; the probe makes it, so a read-only or
    /// misplaced root is reported before jobs fail on it.
    async fn ping(&self) -> Result<(), StoreError> {
        let fail = |e: std::io::Error| StoreError {
            message: format!("the directory {}: {e}", self.root.display()),
            retry: true,
        };
        tokio::fs::create_dir_all(&self.root).await.map_err(fail)?;
        let meta = tokio::fs::metadata(&self.root).await.map_err(fail)?;
        if meta.permissions().readonly() {
            return Err(fail(std::io::Error::other("read-only")));
        }
        Ok(())
    }

    /// One write (see `write_one`), one trip to the blocking pool.
    async fn put(&self, key: &str, body: Bytes, meta: &ObjectMeta) -> Result<(), StoreError> {
        let put = PutRequest {
            key: key.to_string(),
            body,
            meta: meta.clone(),
        };
        let mut results = self.put_many(std::slice::from_ref(&put)).await;
        results.pop().unwrap_or_else(|| {
            Err(StoreError {
                message: format!("writing {key}: no result"),
                retry: true,
            })
        })
    }

    /// All writes of a chunk in one trip to the blocking pool: a thread hand-off per
    /// image cost more than the write itself.
    async fn put_many(&self, puts: &[PutRequest]) -> Vec<Result<(), StoreError>> {
        let mut results: Vec<Option<Result<(), StoreError>>> = puts.iter().map(|_| None).collect();
        let mut files = Vec::with_capacity(puts.len());
        let mut slots = Vec::with_capacity(puts.len());
        for (i, p) in puts.iter().enumerate() {
            if is_safe_key(&p.key) {
                files.push((PathBuf::from(&p.key), p.body.clone()));
                slots.push(i);
            } else {
                results[i] = Some(Err(StoreError {
                    message: format!(
                        "refusing key `{}`: not a relative path of plain names under the store's root",
                        p.key
                    ),
                    retry: false,
                }));
            }
        }
        let (root, turns) = (self.root.clone(), self.turns.clone());
        let n = files.len();
        let written = tokio::task::spawn_blocking(move || {
            let results = write_many(&root, &turns, &files);
            files
                .iter()
                .zip(results)
                .map(|((key, _), r)| {
                    r.map_err(|e| StoreError {
                        message: format!("writing {}: {e}", root.join(key).display()),
                        retry: e.kind() != std::io::ErrorKind::InvalidInput,
                    })
                })
                .collect::<Vec<_>>()
        })
        .await;
        let written = written.unwrap_or_else(|e| {
            (0..n)
                .map(|_| {
                    Err(StoreError {
                        message: format!("writer panicked: {e}"),
                        retry: true,
                    })
                })
                .collect()
        });
        for (slot, result) in slots.into_iter().zip(written) {
            results[slot] = Some(result);
        }
        results
            .into_iter()
            .map(|r| r.expect("every put has a result"))
            .collect()
    }

    fn prefix(&self) -> &str {
        ""
    }

    fn url(&self, key: &str) -> String {
        let path = self.path(key);
        let abs = std::path::absolute(&path).unwrap_or(path);
        format!("file://{}", abs.display())
    }

    async fn read_into(
        &self,
        key: &str,
        cap: u64,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, StoreError> {
        let failed = |e: std::io::Error| StoreError {
            message: format!("reading {}: {e}", self.path(key).display()),
            retry: false,
        };
        if !is_safe_key(key) {
            return Err(failed(bad_key(Path::new(key))));
        }
        let file = std::fs::File::open(self.path(key)).map_err(failed)?;
        if file.metadata().map_err(failed)?.len() > cap {
            return Err(super::over_cap(&self.url(key), cap));
        }
        // One byte past the cap tells a file that grew since from one at the cap.
        let read = std::io::copy(&mut std::io::Read::take(file, cap + 1), out).map_err(failed)?;
        if read > cap {
            return Err(super::over_cap(&self.url(key), cap));
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests;
