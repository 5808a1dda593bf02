//! The API's one error shape: `{"error": {"code", "message"}}` with the right status.
//! Messages say what the client can fix; internal causes go to the server's log only.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

use crate::{db::DbError, input::InputError};

/// Every error's body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
pub struct ErrorObject {
    /// Stable and machine-readable: `bad_request`, `unauthorized`, `forbidden`,
    /// `not_found`, `invalid_jobs`, `too_large`, `idempotency_key_reused`, `timeout`, …
    pub code: &'static str,
    /// What went wrong, for a person; never an internal detail.
    pub message: String,
    /// For `invalid_jobs`: the refused lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<RefusedLines>,
}

// The refusals operations share, for the OpenAPI document: each variant is one
// status the operation may answer, always with an `ErrorBody`. They describe answers
// and are never built.

/// What a list may refuse.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum ListRefusals {
    #[response(
        status = 400,
        description = "Malformed: a bad id, cursor, limit or option"
    )]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "No token, or not a valid one")]
    Unauthorized(ErrorBody),
}

/// What a read of one batch or job may refuse.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum ItemRefusals {
    #[response(
        status = 400,
        description = "Malformed: a bad id, cursor, limit or option"
    )]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "No token, or not a valid one")]
    Unauthorized(ErrorBody),
    #[response(status = 404, description = "No such batch or job")]
    NotFound(ErrorBody),
}

/// What an action on a batch or job may refuse.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum ActionRefusals {
    #[response(
        status = 400,
        description = "Malformed: a bad id, cursor, limit or option"
    )]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "No token, or not a valid one")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "The token's scope does not cover this")]
    Forbidden(ErrorBody),
    #[response(status = 404, description = "No such batch or job")]
    NotFound(ErrorBody),
}

/// What a request that makes jobs may refuse before reading them.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum SubmitRefusals {
    #[response(status = 400, description = "Malformed: a bad option or body")]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "No token, or not a valid one")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "The token's scope does not cover this")]
    Forbidden(ErrorBody),
}

/// The lines of a submit that were refused (nothing was queued).
#[derive(Debug, Serialize, ToSchema)]
pub struct RefusedLines {
    /// How many lines were refused.
    pub total: usize,
    /// The first of them.
    pub first: Vec<RefusedLine>,
}

/// One refused line: where, which field, why.
#[derive(Debug, Serialize, ToSchema)]
pub struct RefusedLine {
    /// From 1.
    pub line: usize,
    /// The CSV column at fault, when it is a column rather than a job field.
    pub column: Option<String>,
    /// The job field at fault.
    pub field: &'static str,
    pub reason: String,
}

/// An answer other than success.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code (`not_found`, `invalid_jobs`, …).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// The refused lines of a submit.
    pub lines: Option<RefusedLines>,
}

impl ApiError {
    /// An error with a status, a code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            lines: None,
        }
    }

    /// 400: the request cannot be understood as given.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404: nothing of that kind has that id.
    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} {id}"),
        )
    }

    /// 500, logged with its cause; the client learns nothing about the inside.
    pub fn internal(context: &str, cause: impl std::fmt::Display) -> Self {
        tracing::error!("{context}: {cause}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{context} failed; the server's log says why"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = ErrorObject {
            code: self.code,
            message: self.message,
            lines: self.lines,
        };
        (self.status, Json(ErrorBody { error })).into_response()
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        ApiError::internal("reading or writing the record", e)
    }
}

/// A refused submit body: which lines and fields, or why the whole body.
impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        match e {
            InputError::Invalid { ref errors, total } => {
                let first = errors
                    .iter()
                    .map(|l| RefusedLine {
                        line: l.line,
                        column: l.column.clone(),
                        field: l.error.field,
                        reason: l.error.reason.clone(),
                    })
                    .collect();
                let mut err = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_jobs",
                    e.to_string(),
                );
                err.lines = Some(RefusedLines { total, first });
                err
            }
            InputError::TooLarge(m) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", m),
            InputError::Options(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_options", m),
            InputError::Empty => {
                ApiError::new(StatusCode::BAD_REQUEST, "empty", "the request has no jobs")
            }
            InputError::Io { source, .. } => {
                ApiError::bad_request(format!("the body could not be read: {source}"))
            }
        }
    }
}

/// The answer to a request axum's extractors refused (a body over the limit, a query
/// that does not parse), in the API's shape.
pub fn rejection(status: StatusCode, message: String) -> ApiError {
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "bad_request",
    };
    ApiError::new(status, code, message)
}
