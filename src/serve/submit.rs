//! `POST /v1/batches`: a batch from JSON Lines, a JSON array (or `{"jobs": […], …}`),
//! or CSV through a template, checked as `renderq submit` checks a file: every refused
//! line named with its field, and nothing queued unless every line is valid.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Query, State, rejection::BytesRejection, rejection::QueryRejection},
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::{
    Api,
    batches::query,
    error::{ApiError, ErrorBody, SubmitRefusals, rejection},
};
use crate::{
    db::Once,
    input::{self, SubmitOptions},
    job::{BatchId, JobSpec, Limits, NewJob},
    submit::{self, SubmitError},
    token::Scope,
};

/// The batch's name and how the body becomes jobs: the query string, or the fields
/// beside `jobs` in a JSON object. The names are `renderq submit`'s flags.
#[derive(Debug, Default, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SubmitFields {
    /// The batch's name ("api").
    name: Option<String>,
    /// A URL POSTed the batch's summary when its last job ends.
    webhook: Option<String>,
    /// Attempts per job before it is marked failed, 1 to 100 (3).
    max_attempts: Option<i32>,
    /// CSV: the prompt over the row's columns, e.g. `studio photo of {name} in {color}`.
    template: Option<String>,
    /// CSV: jobs per row, each with its own seed (1).
    variants: Option<u32>,
    /// CSV: the object key over the columns, `{variant}` and `{job_id}`.
    key: Option<String>,
    /// Default width for jobs that set none.
    width: Option<u32>,
    /// Default height for jobs that set none.
    height: Option<u32>,
    /// Default model for jobs that set none.
    model: Option<String>,
    /// Default steps for jobs that set none.
    steps: Option<u32>,
    /// Default scheduler (ddim, euler, euler_a, dpmpp_2m, lcm) for jobs that set none.
    scheduler: Option<String>,
    /// Default format (png, webp, jpeg) for jobs that set none.
    format: Option<String>,
}

/// A JSON object body: the jobs and the fields.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonBatch {
    /// The jobs, in the job JSON.
    #[schema(value_type = Vec<JobSpec>)]
    jobs: Vec<Value>,
    #[serde(flatten)]
    fields: SubmitFields,
}

/// The two shapes of a JSON body (read by [`json_body`]).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // described, not built: `json_body` reads the body as a `Value`
pub enum JsonBody {
    /// An array of jobs; the fields come from the query.
    Jobs(Vec<JobSpec>),
    /// The jobs and the fields.
    Batch(Box<JsonBatch>),
}

/// What a submit made.
#[derive(Serialize, ToSchema)]
pub struct Submitted {
    pub batch_id: BatchId,
    /// Jobs recorded and dispatched.
    pub jobs: usize,
    /// Jobs whose `id` was already recorded: no second job was made.
    pub duplicates: usize,
}

/// The longest batch name.
const MAX_NAME_CHARS: usize = 200;

impl SubmitFields {
    /// Fields given both in the query and the body are refused: which would win is
    /// not obvious to a reader of the request.
    fn merge(self, body: SubmitFields) -> Result<SubmitFields, ApiError> {
        macro_rules! one {
            ($($f:ident),*) => {
                SubmitFields { $($f: match (self.$f, body.$f) {
                    (Some(_), Some(_)) => return Err(ApiError::bad_request(concat!(
                        "`", stringify!($f), "` is given in both the query and the body"))),
                    (a, b) => a.or(b),
                }),* }
            };
        }
        Ok(one!(
            name,
            webhook,
            max_attempts,
            template,
            variants,
            key,
            width,
            height,
            model,
            steps,
            scheduler,
            format
        ))
    }

    fn options(&self) -> Result<SubmitOptions, ApiError> {
        let d = SubmitOptions::default();
        let max_attempts = self.max_attempts.unwrap_or(d.max_attempts);
        if !(1..=100).contains(&max_attempts) {
            return Err(ApiError::bad_request("max_attempts must be 1 to 100"));
        }
        Ok(SubmitOptions {
            max_attempts,
            template: self.template.clone(),
            variants: self.variants.unwrap_or(d.variants),
            key: self.key.clone(),
            width: self.width,
            height: self.height,
            model: self.model.clone(),
            steps: self.steps,
            scheduler: named(
                "scheduler",
                &self.scheduler,
                "ddim, euler, euler_a, dpmpp_2m, lcm",
            )?,
            format: named("format", &self.format, "png, webp, jpeg")?,
        })
    }
}

/// A named choice (`scheduler`, `format`) as the job JSON spells it.
fn named<T: serde::de::DeserializeOwned>(
    field: &str,
    value: &Option<String>,
    choices: &str,
) -> Result<Option<T>, ApiError> {
    value
        .as_deref()
        .map(|t| {
            serde_json::from_value(Value::from(t)).map_err(|_| {
                ApiError::bad_request(format!(
                    "{field} `{}` is not one of {choices}",
                    super::views::shown(t)
                ))
            })
        })
        .transpose()
}

/// What the body holds, from its `Content-Type`.
enum BodyKind {
    Jsonl,
    Json,
    Csv,
}

fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(BodyKind::Jsonl);
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/jsonl"
        | "application/x-ndjson"
        | "application/x-jsonlines"
        | "text/plain"
        | "" => Ok(BodyKind::Jsonl),
        "application/json" => Ok(BodyKind::Json),
        "text/csv" => Ok(BodyKind::Csv),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type `{}` is not application/jsonl, application/json or text/csv",
                super::views::shown(other)
            ),
        )),
    }
}

/// The longest `Idempotency-Key`.
const MAX_KEY_LEN: usize = 255;

/// The request's `Idempotency-Key`, as stored: under the token that sent it, so two
/// clients' keys never meet.
fn idempotency_key(headers: &HeaderMap, token: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=MAX_KEY_LEN).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} printable ASCII characters"
            ))
        })?;
    Ok(Some(format!("{}:{key}", token.unwrap_or("-"))))
}

/// The answer to a request whose key made a batch already: the same answer if it is
/// the same request, else a refusal (the key was reused for another one).
async fn replay(api: &Api, key: &str, hash: &[u8]) -> Result<Option<Response>, ApiError> {
    let Some((batch, jobs, stored)) = api.record.batch_for_key(key).await? else {
        return Ok(None);
    };
    if stored != hash {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            format!(
                "this Idempotency-Key made batch {batch} from a different request; use a new key"
            ),
        ));
    }
    Ok(Some(created(batch, jobs as usize, 0, true)))
}

fn created(batch: BatchId, jobs: usize, duplicates: usize, replayed: bool) -> Response {
    let mut answer = (
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/batches/{batch}"))],
        Json(Submitted {
            batch_id: batch,
            jobs,
            duplicates,
        }),
    )
        .into_response();
    if replayed {
        answer.headers_mut().insert(
            "idempotent-replayed",
            header::HeaderValue::from_static("true"),
        );
    }
    answer
}

/// A hash of what makes two requests the same: body type, query and body.
fn request_hash(headers: &HeaderMap, uri: &Uri, body: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    for part in [content_type, uri.query().unwrap_or("").as_bytes(), body] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().to_vec()
}

/// Submits a batch: JSON Lines (one job per line), a JSON array of jobs, a JSON
/// object with `jobs` and the fields, or CSV through `template`. Every line is checked
/// first: one bad line refuses the whole request (422, each line named with its
/// field) and nothing is queued. Answers 201 once every job is recorded and
/// dispatched. With `Idempotency-Key`, a repeat of the request answers the same and
/// makes nothing (`Idempotent-Replayed: true`).
#[utoipa::path(post, path = "/v1/batches", operation_id = "submit_batch", tag = "batches",
    params(SubmitFields,
           ("Idempotency-Key" = Option<String>, Header,
            description = "Makes a repeat of this request answer the same and make nothing")),
    request_body(
        description = "JSON Lines (one job JSON per line); a JSON array of jobs, or an object \
                       with `jobs` and the fields; or CSV (a header row, then one row per \
                       product) with `template`",
        content((String = "application/jsonl"), (JsonBody = "application/json"),
                (String = "text/csv"))),
    security(("bearer" = ["submit"])),
    responses((status = 201, description = "The batch is recorded and dispatched", body = Submitted,
               headers(("Location" = String, description = "The batch's URL"))),
              SubmitRefusals,
              (status = 413, description = "The body is over the server's limit", body = ErrorBody),
              (status = 415, description = "A body type this endpoint does not take", body = ErrorBody),
              (status = 422, description = "Refused lines, or a reused Idempotency-Key",
               body = ErrorBody),
              (status = 503, description = "Recorded but not dispatched yet", body = ErrorBody)))]
pub async fn submit_batch(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<SubmitFields>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let token = api.authorize(&headers, Scope::Submit).await?;
    let key = idempotency_key(&headers, token.as_deref())?;
    let from_query = query(q)?;
    let body = body.map_err(|e| rejection(e.status(), e.body_text()))?;
    let hash = request_hash(&headers, &uri, &body);
    if let Some(key) = &key
        && let Some(answer) = replay(&api, key, &hash).await?
    {
        return Ok(answer);
    }
    let kind = body_kind(&headers)?;
    let (fields, text) = match kind {
        BodyKind::Json => json_body(&body, from_query)?,
        BodyKind::Jsonl | BodyKind::Csv => (from_query, body),
    };
    let options = fields.options()?;
    let name = fields.name.clone().unwrap_or_else(|| "api".into());
    if name.trim().is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::bad_request(format!(
            "name must be 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    if let Some(url) = &fields.webhook {
        crate::webhook::validate(url).map_err(ApiError::bad_request)?;
    }
    let csv = matches!(kind, BodyKind::Csv);
    let (limits, max_attempts) = (api.limits.clone(), options.max_attempts);
    let jobs = tokio::task::spawn_blocking(move || parse(&text, csv, &options, &limits))
        .await
        .map_err(|e| ApiError::internal("reading the jobs", e))??;
    let once = match &key {
        Some(key) => Once::Request(key, &hash),
        None => Once::Always,
    };
    let done = submit::submit_once(
        api.record.as_ref(),
        api.dispatch.as_ref(),
        &name,
        &jobs,
        max_attempts,
        fields.webhook.as_deref(),
        once,
    )
    .await
    .map_err(|e| match e {
        SubmitError::Db(e) => ApiError::from(e),
        e @ SubmitError::Dispatch(_) => {
            tracing::error!("{e}");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "dispatch_unavailable",
                "the jobs are recorded but could not be dispatched now; the reconciler dispatches them when dispatch is back",
            )
        }
    })?;
    match (done, &key) {
        (Some(done), _) => Ok(created(done.batch, done.jobs, done.duplicates, false)),
        // Another request with the same key committed first: answer as it did.
        (None, Some(key)) => replay(&api, key, &hash)
            .await?
            .ok_or_else(|| ApiError::internal("replaying a keyed request", "its batch is gone")),
        (None, None) => Err(ApiError::internal(
            "submitting",
            "an unkeyed batch collided",
        )),
    }
}

/// A JSON body: an array of jobs, or an object with `jobs` and the fields. Either
/// becomes JSON Lines, one job per line, so line N is the array's Nth job.
fn json_body(body: &[u8], from_query: SubmitFields) -> Result<(SubmitFields, Bytes), ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let (jobs, fields) = match value {
        Value::Array(jobs) => (jobs, from_query),
        object @ Value::Object(_) => {
            let batch: JsonBatch = serde_json::from_value(object).map_err(|e| {
                ApiError::bad_request(format!(
                    "the body is neither an array of jobs nor {{\"jobs\": […], …}}: {e}"
                ))
            })?;
            (batch.jobs, from_query.merge(batch.fields)?)
        }
        _ => {
            return Err(ApiError::bad_request(
                "the body is neither an array of jobs nor {\"jobs\": […], …}",
            ));
        }
    };
    let mut lines = Vec::with_capacity(body.len());
    for job in &jobs {
        serde_json::to_writer(&mut lines, job)
            .map_err(|e| ApiError::internal("re-encoding a job", e))?;
        lines.push(b'\n');
    }
    Ok((fields, Bytes::from(lines)))
}

fn parse(
    text: &[u8],
    csv: bool,
    options: &SubmitOptions,
    limits: &Limits,
) -> Result<Vec<NewJob>, ApiError> {
    let jobs = if csv {
        let Some(catalogue) = options.catalogue()? else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_options",
                "a CSV body needs `template`: how a row becomes a prompt, e.g. template=photo of {name}",
            ));
        };
        catalogue.parse(text, limits)?
    } else {
        input::parse_jsonl_with(text, limits, options)?
    };
    Ok(jobs)
}
