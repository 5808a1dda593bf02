//! `/v1/batches/…`: pages of batches and of a batch's jobs, one batch's progress, its
//! manifest, and the actions on it (cancel, retry).

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{
    Api,
    error::{ActionRefusals, ApiError, ErrorBody, ItemRefusals, ListRefusals, rejection},
    views::{
        self, Batch, BatchList, CancelOutcome, Job, JobList, RetryOutcome, page_size, parse_id,
        parse_state,
    },
};
use crate::{
    db::{BatchQuery, JobQuery},
    job::{BatchId, JobId},
    manifest::{self, Format},
    token::Scope,
};

/// Unwraps a query string, or answers why it does not parse.
pub fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| rejection(e.status(), e.body_text()))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Text the batch's name contains (any case).
    name: Option<String>,
    /// `running` or `done`.
    state: Option<String>,
    /// The `next` of the previous page.
    before: Option<String>,
    /// Batches per page, 1 to 500 (50).
    limit: Option<i64>,
}

/// Batches, newest first; `next` is the cursor of the following page.
#[utoipa::path(get, path = "/v1/batches", operation_id = "list_batches", tag = "batches", params(ListQuery),
    security(("bearer" = ["read"])),
    responses((status = 200, description = "A page of batches", body = BatchList),
              ListRefusals))]
pub async fn list(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<BatchList>, ApiError> {
    api.authorize(&headers, Scope::Read).await?;
    let q = query(q)?;
    let done = match q.state.as_deref() {
        None => None,
        Some("running") => Some(false),
        Some("done") => Some(true),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "state `{}` is not running or done",
                views::shown(other)
            )));
        }
    };
    let limit = page_size(q.limit)?;
    let before = q
        .before
        .as_deref()
        .map(|b| parse_id::<BatchId>(b, "batch"))
        .transpose()?;
    let page = api
        .record
        .batch_page(&BatchQuery {
            name: q.name.filter(|n| !n.is_empty()),
            done,
            before,
            limit,
        })
        .await?;
    let next = (page.len() as i64 == limit)
        .then(|| page.last().map(|b| b.progress.batch_id.to_string()))
        .flatten();
    let batches = page.iter().map(Batch::of).collect();
    Ok(Json(BatchList { batches, next }))
}

/// One batch: counts, throughput, ETA and the webhook's outcome.
#[utoipa::path(get, path = "/v1/batches/{id}", operation_id = "get_batch", tag = "batches",
    params(("id" = uuid::Uuid, Path, description = "The batch's id")),
    security(("bearer" = ["read"])),
    responses((status = 200, description = "The batch", body = Batch),
              ItemRefusals))]
pub async fn one(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Batch>, ApiError> {
    api.authorize(&headers, Scope::Read).await?;
    let info = api.batch(&id).await?;
    Ok(Json(Batch::of(&info)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// Only jobs in this state: queued, running, retrying, succeeded, failed, cancelled.
    state: Option<String>,
    /// Text the prompt contains (any case).
    q: Option<String>,
    /// The `next` of the previous page.
    after: Option<String>,
    /// Jobs per page, 1 to 500 (50).
    limit: Option<i64>,
}

/// A batch's jobs by id, from `after`; filtered by state and prompt.
#[utoipa::path(get, path = "/v1/batches/{id}/jobs", operation_id = "list_batch_jobs", tag = "batches",
    params(("id" = uuid::Uuid, Path, description = "The batch's id"), JobsQuery),
    security(("bearer" = ["read"])),
    responses((status = 200, description = "A page of the batch's jobs", body = JobList),
              ItemRefusals))]
pub async fn jobs(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<JobsQuery>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    api.authorize(&headers, Scope::Read).await?;
    let q = query(q)?;
    let limit = page_size(q.limit)?;
    let query = JobQuery {
        state: q.state.as_deref().map(parse_state).transpose()?,
        search: q.q.filter(|s| !s.is_empty()),
        after: q
            .after
            .as_deref()
            .map(|a| parse_id::<JobId>(a, "job"))
            .transpose()?,
        limit,
    };
    let id = api.batch(&id).await?.progress.batch_id;
    let page = api.record.job_page(id, &query).await?;
    let next = (page.len() as i64 == limit)
        .then(|| page.last().map(|j| j.id.to_string()))
        .flatten();
    let jobs = page.iter().map(Job::of).collect();
    Ok(Json(JobList { jobs, next }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ManifestQuery {
    /// `csv` (the default) or `jsonl`.
    format: Option<String>,
    /// How long the presigned URLs stay valid, 1 to 604800 seconds (604800).
    expires_secs: Option<u64>,
}

/// The longest a manifest's presigned URLs may stay valid (S3's own limit).
const MAX_EXPIRES: Duration = Duration::from_secs(7 * 24 * 3600);

/// A batch's manifest, as `renderq manifest` writes it: one row per job with its state,
/// object key and a presigned URL.
#[utoipa::path(get, path = "/v1/batches/{id}/manifest", operation_id = "get_batch_manifest", tag = "batches",
    params(("id" = uuid::Uuid, Path, description = "The batch's id"), ManifestQuery),
    security(("bearer" = ["read"])),
    responses((status = 200, description = "The manifest",
               content(("text/csv"), ("application/jsonl"))),
              ItemRefusals))]
pub async fn manifest(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<ManifestQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    api.authorize(&headers, Scope::Read).await?;
    let q = query(q)?;
    let format: Format = q
        .format
        .as_deref()
        .unwrap_or("csv")
        .parse()
        .map_err(|e: String| ApiError::bad_request(format!("format {e}")))?;
    let expires = q.expires_secs.map_or(MAX_EXPIRES, Duration::from_secs);
    if expires.is_zero() || expires > MAX_EXPIRES {
        return Err(ApiError::bad_request(format!(
            "expires_secs must be 1 to {}",
            MAX_EXPIRES.as_secs()
        )));
    }
    let id = api.batch(&id).await?.progress.batch_id;
    let mut out = Vec::new();
    manifest::write(
        api.record.as_ref(),
        api.store.as_ref(),
        id,
        format,
        expires,
        &mut out,
    )
    .await
    .map_err(|e| ApiError::internal("writing the manifest", e))?;
    let content_type = match format {
        Format::Csv => "text/csv; charset=utf-8",
        Format::Jsonl => "application/jsonl; charset=utf-8",
    };
    Ok(([(header::CONTENT_TYPE, content_type)], out).into_response())
}

/// Cancels every unfinished job of the batch.
#[utoipa::path(post, path = "/v1/batches/{id}/cancel", operation_id = "cancel_batch", tag = "batches",
    params(("id" = uuid::Uuid, Path, description = "The batch's id")),
    security(("bearer" = ["admin"])),
    responses((status = 200, description = "What was cancelled", body = CancelOutcome),
              ActionRefusals))]
pub async fn cancel(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<CancelOutcome>, ApiError> {
    api.authorize(&headers, Scope::Admin).await?;
    cancel_batch(&api, &id).await
}

/// Cancels the batch a path names (the API and the dashboard's button).
pub async fn cancel_batch(api: &Api, id: &str) -> Result<Json<CancelOutcome>, ApiError> {
    let batch = api.batch(id).await?;
    cancelled(api, batch.progress.batch_id.0).await
}

/// Cancels a job or a batch the caller found, and ends the batch when that was its
/// last unfinished job.
pub async fn cancelled(api: &Api, id: uuid::Uuid) -> Result<Json<CancelOutcome>, ApiError> {
    let done = api.record.cancel(id).await?;
    let finished = match done.batch {
        Some(batch) => !api.record.finish_batches(&[batch]).await?.is_empty(),
        None => false,
    };
    Ok(Json(CancelOutcome {
        cancelled: done.jobs,
        batch_finished: finished,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RetryQuery {
    /// More attempts each failed job gets, 1 to 100 (3).
    max_attempts: Option<i32>,
}

/// Queues the batch's failed jobs again, with `max_attempts` more attempts each.
#[utoipa::path(post, path = "/v1/batches/{id}/retry", operation_id = "retry_batch", tag = "batches",
    params(("id" = uuid::Uuid, Path, description = "The batch's id"), RetryQuery),
    security(("bearer" = ["admin"])),
    responses((status = 200, description = "What was queued again", body = RetryOutcome),
              ActionRefusals,
              (status = 409, description = "The batch is on another queue than this server's",
               body = ErrorBody)))]
pub async fn retry(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<RetryQuery>, QueryRejection>,
) -> Result<Json<RetryOutcome>, ApiError> {
    api.authorize(&headers, Scope::Admin).await?;
    let attempts = query(q)?.max_attempts.unwrap_or(3);
    retry_batch(&api, &id, attempts).await
}

/// Queues a batch's failed jobs again with `attempts` more attempts (the API and the
/// dashboard's button).
pub async fn retry_batch(
    api: &Api,
    id: &str,
    attempts: i32,
) -> Result<Json<RetryOutcome>, ApiError> {
    if !(1..=100).contains(&attempts) {
        return Err(ApiError::bad_request("max_attempts must be 1 to 100"));
    }
    let info = api.batch(id).await?;
    let id = info.progress.batch_id;
    if info.queue != api.dispatch.queue() {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "other_queue",
            format!(
                "batch {id} is on queue `{}`; this server dispatches to `{}`",
                info.queue,
                api.dispatch.queue()
            ),
        ));
    }
    let ids = api.record.retry_failed(id, attempts).await?;
    let placed = api.record.placement(&ids).await?;
    crate::dispatch::enqueue_placed(api.dispatch.as_ref(), &placed)
        .await
        .map_err(|e| ApiError::internal("dispatching the retried jobs", e))?;
    Ok(Json(RetryOutcome {
        requeued: ids.len(),
    }))
}
