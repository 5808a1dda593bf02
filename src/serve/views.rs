//! What the API answers, as JSON: batches with their progress, jobs, and the ids and
//! page sizes it takes from a request.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{MAX_PAGE, error::ApiError};
use crate::{
    db::{BatchInfo, JobDetail, JobRow, Webhook},
    job::JobState,
    redact::webhook_origin,
};

/// Parses an id from the path; anything but a UUID is refused before any query.
pub fn parse_id<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request(format!("`{}` is not a {what} id (a UUID)", shown(text)))
    })
}

/// A client's text in a message: at most 80 characters, control characters dropped.
pub fn shown(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(80).collect()
}

/// A page size: 50 when not given, at most [`MAX_PAGE`].
pub fn page_size(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(50),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit {n} is out of range (1 to {MAX_PAGE})"
        ))),
    }
}

/// A state filter.
pub fn parse_state(text: &str) -> Result<JobState, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "state `{}` is not one of queued, running, retrying, succeeded, failed, cancelled",
            shown(text)
        ))
    })
}

/// When a batch's first job started and its latest one finished.
pub type Span = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// A batch with its counts; `times` (first start, last finish) and `webhook` when
/// the caller read them (the single-batch view).
pub fn batch(b: &BatchInfo, times: Option<Span>, webhook: Option<&Webhook>) -> Value {
    let p = &b.progress;
    let finished = p.finished();
    let mut v = json!({
        "id": p.batch_id.to_string(),
        "name": p.name,
        "queue": b.queue,
        "created_at": p.created_at,
        "finished_at": b.finished_at,
        "done": p.done,
        "total": p.total,
        "counts": {
            "queued": p.queued,
            "running": p.running,
            "succeeded": p.succeeded,
            "failed": p.failed,
            "cancelled": p.cancelled,
        },
        "progress": if p.total > 0 { finished as f64 / p.total as f64 } else { 1.0 },
    });
    if let Some((first, last)) = times {
        v["started_at"] = json!(first);
        if let Some(first) = first {
            let until = if p.done {
                last.unwrap_or_else(Utc::now)
            } else {
                Utc::now()
            };
            let secs = (until - first).num_milliseconds().max(1) as f64 / 1000.0;
            let rate = finished as f64 / secs;
            v["jobs_per_second"] = json!(rate);
            if !p.done && rate > 0.0 {
                v["eta_seconds"] = json!(((p.total - finished) as f64 / rate).round());
            }
        }
    }
    if let Some(hook) = webhook {
        // The URL may carry a secret in its path or query: only its origin is shown.
        v["webhook"] = json!({
            "origin": webhook_origin(&hook.url),
            "outcome": hook.status,
        });
    }
    v
}

/// A job as a batch's page lists it.
pub fn job(j: &JobRow) -> Value {
    json!({
        "id": j.id.to_string(),
        "batch_id": j.batch_id.map(|b| b.to_string()),
        "state": j.state.as_str(),
        "attempt": j.attempt,
        "prompt": j.prompt,
        "seed": j.seed,
        "error": j.error,
        "worker": j.worker,
        "object_key": j.output_key,
        "metadata": j.metadata,
        "image": (j.state == JobState::Succeeded).then(|| format!("/v1/jobs/{}/image", j.id)),
    })
}

/// A job with everything the record holds about it.
pub fn job_detail(d: &JobDetail) -> Value {
    let mut v = job(&d.row);
    v["queue"] = json!(d.queue);
    v["spec"] = d.spec.clone();
    v["max_attempts"] = json!(d.max_attempts);
    v["created_at"] = json!(d.created_at);
    v["started_at"] = json!(d.started_at);
    v["finished_at"] = json!(d.finished_at);
    v["retry_at"] = json!(d.run_at);
    v
}
