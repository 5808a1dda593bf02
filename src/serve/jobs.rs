//! `/v1/jobs/{id}`: one job, its image, and cancelling it.

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use serde_json::Value;

use super::{Api, batches, error::ApiError, views};
use crate::{job::JobState, token::Scope};

/// How long the presigned URL an image request redirects to stays valid.
const IMAGE_URL_EXPIRES: Duration = Duration::from_secs(3600);
/// The largest image served through the API from a directory store.
const MAX_IMAGE_BYTES: u64 = 256 << 20;

/// `GET /v1/jobs/{id}`: spec, state, attempts, error, worker, times, object key.
pub async fn one(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    api.authorize(&headers, Scope::Read).await?;
    let detail = api.job(&id).await?;
    Ok(Json(views::job_detail(&detail)))
}

/// `GET /v1/jobs/{id}/image`: a redirect to a presigned URL on S3; the bytes
/// themselves from a directory store.
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

/// `POST /v1/jobs/{id}/cancel`.
pub async fn cancel(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    api.authorize(&headers, Scope::Admin).await?;
    let job = api.job(&id).await?;
    batches::cancelled(&api, job.row.id.0).await
}
