//! The API's one error shape: `{"error": {"code", "message"}}` with the right status.
//! Messages say what the client can fix; internal causes go to the server's log only.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::{db::DbError, input::InputError};

/// An answer other than success.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code (`not_found`, `invalid_jobs`, …).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// Extra fields of the error object (the refused lines of a submit).
    pub details: Option<(&'static str, Value)>,
}

impl ApiError {
    /// An error with a status, a code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
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
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some((key, value)) = self.details {
            error[key] = value;
        }
        (self.status, Json(json!({ "error": error }))).into_response()
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
                let lines: Vec<Value> = errors
                    .iter()
                    .map(|l| {
                        json!({
                            "line": l.line,
                            "column": l.column,
                            "field": l.error.field,
                            "reason": l.error.reason,
                        })
                    })
                    .collect();
                let mut err = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_jobs",
                    e.to_string(),
                );
                err.details = Some(("lines", json!({"total": total, "first": lines})));
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
