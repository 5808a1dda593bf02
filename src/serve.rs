//! `renderq serve`: the HTTP API under `/v1` and the web dashboard on `/`, on the same
//! record, dispatch and store the other commands use. It renders nothing itself:
//! workers do.

mod auth;
mod batches;
mod dashboard;
mod error;
mod events;
mod images;
mod jobs;
mod openapi;
mod submit;
mod views;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::StatusCode,
    routing::{get, post},
};
use tokio_util::sync::CancellationToken;

pub use auth::AuthMode;
pub use error::ApiError;
pub use openapi::ApiDoc;

use crate::{
    db::{BatchInfo, JobDetail, Record},
    dispatch::Dispatch,
    job::{BatchId, JobId, Limits},
    store::Store,
};

/// The largest request body by default: a 40,000-row catalogue is a few MB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;
/// How long `POST /v1/images/generations` waits for its images by default.
pub const DEFAULT_GENERATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// Most rows one page of a list holds.
pub const MAX_PAGE: i64 = 500;

/// What every handler reads: the record, dispatch and store, and the rules.
pub struct Api {
    /// The record.
    pub record: Arc<dyn Record>,
    /// Where submitted and retried jobs are dispatched (the queue `serve` was given).
    pub dispatch: Arc<dyn Dispatch>,
    /// Where images are read from.
    pub store: Arc<dyn Store>,
    /// When a token is needed.
    pub auth: AuthMode,
    /// The limits a submitted job is held to.
    pub limits: Limits,
    /// The largest request body, in bytes.
    pub max_body_bytes: usize,
    /// How long `POST /v1/images/generations` waits for its images.
    pub generation_timeout: std::time::Duration,
    /// The key of the dashboard's CSRF tokens, made at start.
    pub csrf_secret: [u8; 32],
    /// `renderq_events` as Postgres announces them (see [`relay_events`]); `None` on
    /// SQLite, where `/v1/events` only polls.
    pub events: Option<tokio::sync::broadcast::Sender<serde_json::Value>>,
}

/// Starts relaying Postgres's `renderq_events` (LISTEN on `database_url`) to
/// `/v1/events` clients; returns what [`Api::events`] takes.
pub fn relay_events(database_url: &str) -> tokio::sync::broadcast::Sender<serde_json::Value> {
    let (tx, _) = tokio::sync::broadcast::channel(events::BACKLOG);
    tokio::spawn(events::relay(database_url.to_string(), tx.clone()));
    tx
}

impl Api {
    /// The batch a path names.
    async fn batch(&self, id: &str) -> Result<BatchInfo, ApiError> {
        let id: BatchId = views::parse_id(id, "batch")?;
        self.record
            .batch_info(id)
            .await?
            .ok_or_else(|| ApiError::not_found("batch", id))
    }

    /// The job a path names.
    async fn job(&self, id: &str) -> Result<JobDetail, ApiError> {
        let id: JobId = views::parse_id(id, "job")?;
        self.record
            .job_detail(id)
            .await?
            .ok_or_else(|| ApiError::not_found("job", id))
    }
}

/// The API's routes on `api`.
pub fn router(api: Arc<Api>) -> Router {
    let limit = api.max_body_bytes;
    Router::new()
        .route("/v1/batches", post(submit::submit_batch).get(batches::list))
        .route("/v1/batches/{id}", get(batches::one))
        .route("/v1/batches/{id}/jobs", get(batches::jobs))
        .route("/v1/batches/{id}/manifest", get(batches::manifest))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
        .route("/v1/batches/{id}/retry", post(batches::retry))
        .route("/v1/jobs/{id}", get(jobs::one))
        .route("/v1/jobs/{id}/image", get(jobs::image))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/images/generations", post(images::generate))
        .route("/v1/events", get(events::events))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/", get(dashboard::batches))
        .route("/batches/{id}", get(dashboard::batch))
        .route("/batches/{id}/{action}", post(dashboard::act))
        .route("/jobs/{id}", get(dashboard::job))
        .route("/fleet", get(dashboard::fleet))
        .route("/login", get(dashboard::login_form).post(dashboard::login))
        .route("/logout", post(dashboard::logout))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(api)
}

/// Whether an address is reachable only from this machine.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Serves `router` on `listener` until `stop` is cancelled, then finishes the
/// requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
