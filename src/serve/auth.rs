//! Who may do what: bearer tokens (`Authorization: Bearer rq_…`) checked against the
//! record, each with a scope.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};

use super::{Api, error::ApiError};
use crate::token::{self, Scope};

/// When the API asks for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Never (`--no-auth`).
    Off,
    /// Always: the address is reachable from other machines.
    Required,
    /// Once the record holds an unrevoked token (a loopback address: until then only
    /// this machine's users can reach the API).
    OnceAnyToken,
}

/// How stale a token's `last_used_at` may get before a request updates it.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

impl Api {
    /// Checks the request's token against the scope it needs; returns the token's id
    /// when one was checked.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        needed: Scope,
    ) -> Result<Option<String>, ApiError> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .or_else(|| signed_in(headers));
        let Some(presented) = presented else {
            return match self.auth {
                AuthMode::Off => Ok(None),
                AuthMode::OnceAnyToken if !self.record.any_active_token().await? => Ok(None),
                _ => Err(unauthorized(
                    "this API needs a token: Authorization: Bearer rq_…",
                )),
            };
        };
        if self.auth == AuthMode::Off {
            return Ok(None);
        }
        let refused = || unauthorized("the token is not valid (unknown, malformed or revoked)");
        let (id, secret) = token::parse(presented).ok_or_else(refused)?;
        let (scope, stored, last_used) = self.record.active_token(id).await?.ok_or_else(refused)?;
        if !token::matches(secret, &stored) {
            return Err(refused());
        }
        if !scope.allows(needed) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this needs a token with scope `{needed}`; this one has `{scope}`"),
            ));
        }
        let stale = last_used
            .is_none_or(|t| (chrono::Utc::now() - t).to_std().unwrap_or_default() > TOUCH_EVERY);
        if stale {
            let (record, id) = (self.record.clone(), id.to_string());
            tokio::spawn(async move {
                if let Err(e) = record.touch_token(&id).await {
                    tracing::warn!("recording a token's use: {e}");
                }
            });
        }
        Ok(Some(id.to_string()))
    }
}

/// The token of a browser signed in to the dashboard (its HttpOnly cookie).
fn signed_in(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == super::dashboard::COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}
