//! Submit: write a batch of validated jobs to the record (rows in a few large
//! statements), then dispatch the new ones (pipelined chunks, each in its lane). The
//! jobs come from [`crate::input`], which refuses a file before anything is written.

use crate::{
    db::{DbError, Once, Record},
    dispatch::{Dispatch, DispatchError},
    job::{BatchId, JobId, NewJob, Placed},
};

/// Why a batch of valid jobs was not queued whole.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Nothing was written.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The rows are written; the reconciler dispatches them later.
    #[error(
        "{0}; the batch's rows are committed, and the reconciler will dispatch them when Redis is back"
    )]
    Dispatch(#[from] DispatchError),
}

/// The new jobs among `jobs` (those `inserted`) of `batch`, each with its priority.
pub fn placed(batch: BatchId, jobs: &[NewJob], inserted: &[JobId]) -> Vec<Placed> {
    let place = |j: &NewJob| (j.id, Some(batch), j.spec.priority);
    if inserted.len() == jobs.len() {
        return jobs.iter().map(place).collect();
    }
    let new: std::collections::HashSet<&JobId> = inserted.iter().collect();
    jobs.iter()
        .filter(|j| new.contains(&j.id))
        .map(place)
        .collect()
}

/// What a submit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    /// The batch written.
    pub batch: BatchId,
    /// Jobs written and dispatched.
    pub jobs: usize,
    /// Jobs whose id existed already were not added again.
    pub duplicates: usize,
}

/// Writes the batch, then dispatches the jobs that were new.
pub async fn submit(
    record: &dyn Record,
    dispatch: &dyn Dispatch,
    name: &str,
    jobs: &[NewJob],
    max_attempts: i32,
) -> Result<Submitted, SubmitError> {
    submit_with_webhook(record, dispatch, name, jobs, max_attempts, None).await
}

/// As `submit`, with a webhook for the batch's end.
pub async fn submit_with_webhook(
    record: &dyn Record,
    dispatch: &dyn Dispatch,
    name: &str,
    jobs: &[NewJob],
    max_attempts: i32,
    webhook: Option<&str>,
) -> Result<Submitted, SubmitError> {
    let done = submit_once(
        record,
        dispatch,
        name,
        jobs,
        max_attempts,
        webhook,
        Once::Always,
    )
    .await?;
    done.ok_or_else(|| {
        SubmitError::Db(DbError::Invalid(
            "a batch without a schedule or key cannot collide".into(),
        ))
    })
}

/// As `submit_with_webhook`, once per schedule firing or request key (see [`Once`]):
/// `None` when that firing's or key's batch exists, and then nothing is written.
pub async fn submit_once(
    record: &dyn Record,
    dispatch: &dyn Dispatch,
    name: &str,
    jobs: &[NewJob],
    max_attempts: i32,
    webhook: Option<&str>,
    once: Once<'_>,
) -> Result<Option<Submitted>, SubmitError> {
    let Some((batch, inserted)) = record
        .create_batch_for(name, dispatch.queue(), jobs, max_attempts, once)
        .await?
    else {
        return Ok(None);
    };
    if let Some(url) = webhook {
        record.set_webhook(batch, url).await?;
    }
    crate::dispatch::enqueue_placed(dispatch, &placed(batch, jobs, &inserted)).await?;
    Ok(Some(Submitted {
        batch,
        jobs: inserted.len(),
        duplicates: jobs.len() - inserted.len(),
    }))
}
