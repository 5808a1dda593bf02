//! `POST /v1/images/generations` in OpenAI's shape, so any OpenAI client library can
//! render on a renderq fleet: the request becomes a batch of `n` jobs, the answer
//! waits for them (within `--generation-timeout-secs`) and carries each image as
//! `b64_json` or a `url`. SGLang's extras are taken too.

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::{
    Api,
    error::{ApiError, ErrorBody, SubmitRefusals, rejection},
    views::shown,
};
use crate::{
    db::JobRow,
    input::{self, SubmitOptions},
    job::JobState,
    submit,
    token::Scope,
};

/// Most images one request may ask for.
const MAX_N: u32 = 16;
/// How long a returned `url` stays valid on S3.
const URL_EXPIRES: Duration = Duration::from_secs(3600);
/// How often the record is read while waiting.
const POLL: Duration = Duration::from_millis(100);
/// The largest image returned as `b64_json`.
const MAX_IMAGE_BYTES: u64 = 64 << 20;

/// The request, as OpenAI and SGLang define it. Fields neither renderq nor its models
/// use (`quality`, `style`, `user`, …) are accepted and ignored, as OpenAI-compatible
/// servers do.
#[derive(Deserialize, ToSchema)]
pub struct Generation {
    /// What to draw.
    prompt: String,
    /// How many images, 1 to 16 (1); image i renders with seed + i.
    n: Option<u32>,
    /// `WIDTHxHEIGHT` (the job default, 512x512).
    size: Option<String>,
    /// `url` (the default) or `b64_json`.
    response_format: Option<String>,
    /// The renderq model (the job default).
    model: Option<String>,
    seed: Option<u64>,
    negative_prompt: Option<String>,
    num_inference_steps: Option<u32>,
    guidance_scale: Option<f64>,
}

/// The answer, in OpenAI's shape.
#[derive(Serialize, ToSchema)]
pub struct Generated {
    /// Unix seconds.
    created: i64,
    data: Vec<GeneratedImage>,
}

/// One image: `b64_json` or `url`, as the request's `response_format` asked.
#[derive(Serialize, ToSchema)]
pub struct GeneratedImage {
    #[serde(skip_serializing_if = "Option::is_none")]
    b64_json: Option<String>,
    /// A presigned URL on S3 (valid an hour), or this server's image endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
}

/// `WIDTHxHEIGHT`.
fn parse_size(size: &str) -> Result<(u32, u32), ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "size `{}` is not WIDTHxHEIGHT (e.g. 512x512)",
            shown(size)
        ))
    };
    let (w, h) = size.split_once('x').ok_or_else(bad)?;
    Ok((w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?))
}

/// The request's jobs as JSON Lines: job `i` gets seed `seed + i` when a seed is given.
fn job_lines(g: &Generation, n: u32) -> Result<String, ApiError> {
    let mut job = Map::new();
    job.insert("prompt".into(), json!(g.prompt));
    if let Some(size) = &g.size {
        let (w, h) = parse_size(size)?;
        job.insert("width".into(), json!(w));
        job.insert("height".into(), json!(h));
    }
    let optional = [
        ("model", g.model.as_ref().map(|m| json!(m))),
        (
            "negative_prompt",
            g.negative_prompt.as_ref().map(|p| json!(p)),
        ),
        ("steps", g.num_inference_steps.map(|s| json!(s))),
        ("guidance", g.guidance_scale.map(|s| json!(s))),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            job.insert(key.into(), v);
        }
    }
    let mut lines = String::new();
    for i in 0..n {
        if let Some(seed) = g.seed {
            job.insert(
                "seed".into(),
                json!(seed.wrapping_add(i as u64) & (i64::MAX as u64)),
            );
        }
        lines.push_str(&Value::Object(job.clone()).to_string());
        lines.push('\n');
    }
    Ok(lines)
}

/// Renders `n` images and answers when they are stored, in OpenAI's shape.
#[utoipa::path(post, path = "/v1/images/generations", operation_id = "create_image", tag = "openai",
    request_body = Generation,
    security(("bearer" = ["submit"])),
    responses((status = 200, description = "The images", body = Generated),
              SubmitRefusals,
              (status = 422, description = "Refused input: nothing was done", body = ErrorBody),
              (status = 500, description = "A job failed", body = ErrorBody),
              (status = 504, description = "Not ready within the server's timeout; the \
               message names the batch, whose jobs stay queued", body = ErrorBody)))]
pub async fn generate(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Generated>, ApiError> {
    api.authorize(&headers, Scope::Submit).await?;
    let body = body.map_err(|e| rejection(e.status(), e.body_text()))?;
    let g: Generation = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not a generation request: {e}")))?;
    let n = g.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::bad_request(format!("n must be 1 to {MAX_N}")));
    }
    let b64 = match g.response_format.as_deref().unwrap_or("url") {
        "b64_json" => true,
        "url" => false,
        other => {
            return Err(ApiError::bad_request(format!(
                "response_format `{}` is not url or b64_json",
                shown(other)
            )));
        }
    };
    let lines = job_lines(&g, n)?;
    let jobs = input::parse_jsonl_with(lines.as_bytes(), &api.limits, &SubmitOptions::default())?;
    let done = submit::submit(
        api.record.as_ref(),
        api.dispatch.as_ref(),
        "images/generations",
        &jobs,
        SubmitOptions::default().max_attempts,
    )
    .await
    .map_err(|e| ApiError::internal("submitting the generation", e))?;
    let batch = done.batch;
    let deadline = tokio::time::Instant::now() + api.generation_timeout;
    loop {
        // One row read, not a count of the batch's jobs: set once its last job ends.
        if api.record.batch_finished_at(batch).await?.is_some() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "the images were not ready within {} s; they are batch {batch}, still queued: \
                     GET /v1/batches/{batch}",
                    api.generation_timeout.as_secs()
                ),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    let rows = api.record.jobs_of_batch(batch).await?;
    if let Some(failed) = rows.iter().find(|r| r.state != JobState::Succeeded) {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "generation_failed",
            format!(
                "job {} of batch {batch} {}: {}",
                failed.id,
                failed.state,
                failed.error.as_deref().unwrap_or("no error recorded")
            ),
        ));
    }
    let mut data = Vec::with_capacity(rows.len());
    for row in &rows {
        data.push(if b64 {
            GeneratedImage {
                b64_json: Some(image_base64(&api, row).await?),
                url: None,
            }
        } else {
            GeneratedImage {
                b64_json: None,
                url: Some(image_url(&api, &headers, row).await?),
            }
        });
    }
    Ok(Json(Generated {
        created: chrono::Utc::now().timestamp(),
        data,
    }))
}

fn key_of(row: &JobRow) -> Result<&str, ApiError> {
    row.output_key
        .as_deref()
        .ok_or_else(|| ApiError::internal("finding an image", format!("job {} has no key", row.id)))
}

async fn image_base64(api: &Api, row: &JobRow) -> Result<String, ApiError> {
    let mut bytes = Vec::new();
    api.store
        .read_into(key_of(row)?, MAX_IMAGE_BYTES, &mut bytes)
        .await
        .map_err(|e| ApiError::internal("reading an image", e))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// A presigned URL on S3; from a directory store, this server's own image endpoint
/// (which needs the same token as the request).
async fn image_url(api: &Api, headers: &HeaderMap, row: &JobRow) -> Result<String, ApiError> {
    if api.store.presigns() {
        return api
            .store
            .share_url(key_of(row)?, URL_EXPIRES)
            .await
            .map_err(|e| ApiError::internal("presigning an image's URL", e));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    Ok(format!("http://{host}/v1/jobs/{}/image", row.id))
}
