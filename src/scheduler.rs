//! The scheduler: fires due schedules, each firing one batch read from the
//! schedule's file (a local path, or an object in a store). The record's unique
//! `(schedule, scheduled_for)` makes a double firing impossible however many
//! schedulers run.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    db::{DbError, Once, Record},
    dispatch::Dispatch,
    input,
    job::{BatchId, Limits},
    schedule::Schedule,
    store::{Location, Store},
    submit, telemetry,
};

/// Why a firing made no batch; the schedule stays and fires again next time.
#[derive(Debug, thiserror::Error)]
pub enum FireError {
    /// The schedule's file could not be read, or holds no valid batch.
    #[error("reading {file}: {reason}")]
    File {
        /// The file, as the schedule names it.
        file: String,
        /// Why.
        reason: String,
    },
    /// The record failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The batch is written but not dispatched; the reconciler dispatches it.
    #[error("{0}")]
    Dispatch(String),
}

/// Fires one schedule for `scheduled_for`: reads its file, and writes and dispatches a
/// batch, unless that firing's batch exists already (another scheduler won).
pub async fn fire(
    record: &dyn Record,
    dispatch: &dyn Dispatch,
    schedule: &Schedule,
    scheduled_for: DateTime<Utc>,
) -> Result<Option<BatchId>, FireError> {
    let file_err = |reason: String| FireError::File {
        file: schedule.file.clone(),
        reason,
    };
    let local = fetch(&schedule.file).await.map_err(file_err)?;
    let options = schedule.options.clone();
    let path = local.path().to_path_buf();
    let jobs =
        tokio::task::spawn_blocking(move || input::read(&path, &options, &Limits::default()))
            .await
            .map_err(|e| file_err(e.to_string()))?
            .map_err(|e| file_err(e.to_string()))?;
    let name = format!(
        "{}@{}",
        schedule.name,
        scheduled_for.format("%Y-%m-%dT%H:%M:%SZ")
    );
    let created = record
        .create_batch_for(
            &name,
            &schedule.queue,
            &jobs,
            schedule.options.max_attempts,
            Once::Firing(&schedule.name, scheduled_for),
        )
        .await?;
    record.mark_fired(&schedule.name, scheduled_for).await?;
    let Some((batch, ids)) = created else {
        return Ok(None);
    };
    let jobs = submit::placed(batch, &jobs, &ids);
    crate::dispatch::enqueue_placed(dispatch, &jobs)
        .await
        .map_err(|e| FireError::Dispatch(e.to_string()))?;
    Ok(Some(batch))
}

/// A local copy of the schedule's file: the path itself, or an S3 object downloaded.
enum Local {
    Path(std::path::PathBuf),
    Temp(tempfile::NamedTempFile),
}

impl Local {
    fn path(&self) -> &std::path::Path {
        match self {
            Local::Path(p) => p,
            Local::Temp(t) => t.path(),
        }
    }
}

async fn fetch(file: &str) -> Result<Local, String> {
    let (bucket, key) = match Location::parse(file).map_err(|e| e.message)? {
        Location::Local(path) => return Ok(Local::Path(path.into())),
        Location::S3 { key: "", .. } => {
            return Err(format!("`{file}` names no object: use s3://bucket/key"));
        }
        Location::S3 { bucket, key } => (bucket, key),
    };
    let store = crate::store::S3Store::from_env(bucket, "").await;
    // A schedule never reads more than a submit of a local file may hold.
    let cap = Limits::default().max_file_bytes;
    download_manifest(&store, key, cap).await.map(Local::Temp)
}

/// Downloads a schedule's manifest from a store into a temporary file (its suffix,
/// `.csv` or `.jsonl`, follows the key), refusing an object over `cap` bytes.
pub async fn download_manifest(
    store: &dyn Store,
    key: &str,
    cap: u64,
) -> Result<tempfile::NamedTempFile, String> {
    let suffix = if key.to_ascii_lowercase().ends_with(".csv") {
        ".csv"
    } else {
        ".jsonl"
    };
    let mut temp = tempfile::Builder::new()
        .suffix(suffix)
        .tempfile()
        .map_err(|e| e.to_string())?;
    store
        .read_into(key, cap, &mut temp)
        .await
        .map_err(|e| e.message)?;
    Ok(temp)
}

/// Fires due schedules until `stop`: every second it looks at every schedule. Run it
/// alone (`renderq scheduler`) or inside workers (`--scheduler`, one leader at a time).
pub async fn run(
    record: Arc<dyn Record>,
    dispatch: Arc<dyn Dispatch>,
    stop: CancellationToken,
    lead: bool,
) {
    let mut leadership = None;
    loop {
        telemetry::idle_current();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
        telemetry::tick_current();
        if lead && leadership.is_none() {
            match record.lead("renderq-scheduler").await {
                Ok(Some(l)) => leadership = Some(l),
                _ => continue,
            }
        }
        if let Err(e) = tick(record.as_ref(), dispatch.as_ref(), Utc::now()).await {
            warn!("scheduler: {e}");
            leadership = None;
        }
    }
}

/// One look at every schedule of the dispatch's queue.
pub async fn tick(
    record: &dyn Record,
    dispatch: &dyn Dispatch,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    for schedule in record.schedules().await? {
        if schedule.queue != dispatch.queue() {
            continue;
        }
        let Some((at, skipped)) = schedule.due(now) else {
            continue;
        };
        if skipped > 0 {
            telemetry::metrics().fired("missed", skipped as u64);
            warn!(
                schedule = schedule.name,
                skipped, "the scheduler was down: firing only the most recent missed time, {at}"
            );
        }
        match fire(record, dispatch, &schedule, at).await {
            Ok(Some(batch)) => {
                telemetry::metrics().fired("fired", 1);
                info!(schedule = schedule.name, %batch, scheduled_for = %at, "fired")
            }
            Ok(None) => {} // another scheduler fired it
            Err(e) => {
                telemetry::metrics().fired("failed", 1);
                warn!(schedule = schedule.name, scheduled_for = %at, "firing failed: {e}")
            }
        }
    }
    Ok(())
}
