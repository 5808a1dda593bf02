//! `/v1/jobs/{id}`: one job, its image, and cancelling it.

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};

use super::{
    Api, batches,
    error::{ActionRefusals, ApiError, ErrorBody, ItemRefusals},
    views::{CancelOutcome, JobDetailView},
};
use crate::{job::JobState, token::Scope};

/// How long the presigned URL an image request redirects to stays valid.
const IMAGE_URL_EXPIRES: Duration = Duration::from_secs(3600);
/// The largest image served through the API from a directory store.
const MAX_IMAGE_BYTES: u64 = 256 << 20;

/// One job: spec, state, every attempt with its worker and times, error, object key.
#[utoipa::path(get, path = "/v1/jobs/{id}", operation_id = "get_job", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id")),
    security(("bearer" = ["read"])),
    responses((status = 200, description = "The job", body = JobDetailView),
              ItemRefusals))]
pub async fn one(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobDetailView>, ApiError> {
    api.authorize(&headers, Scope::Read).await?;
    let detail = api.job(&id).await?;
    Ok(Json(JobDetailView::of(&detail)))
}

/// A job's image: a redirect to a presigned URL on S3; the bytes themselves from a
/// directory store.
#[utoipa::path(get, path = "/v1/jobs/{id}/image", operation_id = "get_job_image", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id")),
    security(("bearer" = ["read"])),
    responses((status = 200, description = "The image (directory store)",
               content(("image/png"), ("image/jpeg"), ("image/webp"))),
              (status = 307, description = "To a presigned URL of the image (S3)"),
              ItemRefusals,
              (status = 409, description = "The job has no image (yet)", body = ErrorBody)))]
pub async fn image(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    api.authorize(&headers, Scope::Read).await?;
    let detail = api.job(&id).await?;
    let id = detail.row.id;
    let (state, key) = (detail.row.state, detail.row.output_key);
    let Some(key) = key.filter(|_| state == JobState::Succeeded) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_image",
            format!("job {id} has no image: it is {state}"),
        ));
    };
    if api.store.presigns() {
        let url = api
            .store
            .share_url(&key, IMAGE_URL_EXPIRES)
            .await
            .map_err(|e| ApiError::internal("presigning the image's URL", e))?;
        return Ok(Redirect::temporary(&url).into_response());
    }
    let mut bytes = Vec::new();
    api.store
        .read_into(&key, MAX_IMAGE_BYTES, &mut bytes)
        .await
        .map_err(|e| ApiError::internal("reading the image", e))?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type(&key)),
            (header::CACHE_CONTROL, "private, max-age=86400"),
        ],
        bytes,
    )
        .into_response())
}

/// The image's type, by the key's extension (workers always write one).
fn content_type(key: &str) -> &'static str {
    let ext = key.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("jpg" | "jpeg") => "image/jpeg",
        _ => "application/octet-stream",
    }
}

/// Cancels a job that has not finished.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", operation_id = "cancel_job", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id")),
    security(("bearer" = ["admin"])),
    responses((status = 200, description = "What was cancelled", body = CancelOutcome),
              ActionRefusals))]
pub async fn cancel(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<CancelOutcome>, ApiError> {
    api.authorize(&headers, Scope::Admin).await?;
    let job = api.job(&id).await?;
    batches::cancelled(&api, job.row.id.0).await
}
