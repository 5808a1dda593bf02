//! The web dashboard on `/`: batches with live progress, a batch's contact sheet, and
//! one job. Server-rendered HTML (maud) that reads without JavaScript; a short script
//! follows `/v1/events` to update it live. Browsers sign in with an API token
//! (`/login`, kept in an HttpOnly cookie); actions are forms with a CSRF token.

mod pages;

use std::sync::Arc;

use axum::{
    Form,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::{Api, error::ApiError};
use crate::token::{self, Scope};

/// The cookie a signed-in browser sends its token in.
pub const COOKIE: &str = "renderq_token";

/// The CSRF token of this server's forms: an HMAC of a secret made at start, so a
/// page from another site cannot know it.
pub fn csrf_token(api: &Api) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&api.csrf_secret).expect("any key length");
    mac.update(b"renderq dashboard forms");
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a form's CSRF token is this server's, compared in constant time.
fn csrf_ok(api: &Api, presented: &str) -> bool {
    use subtle::ConstantTimeEq;
    csrf_token(api)
        .as_bytes()
        .ct_eq(presented.as_bytes())
        .into()
}

/// A dashboard page's answer to a refusal: sign in when a token is missing or wrong,
/// else the error as a page.
fn refused(e: ApiError) -> Response {
    if e.status == StatusCode::UNAUTHORIZED {
        return Redirect::to("/login").into_response();
    }
    (e.status, Html(pages::error(&e.message).into_string())).into_response()
}

/// Runs a page: checks the reader may read, renders, or answers as [`refused`] does.
async fn page<F>(api: &Api, headers: &HeaderMap, render: F) -> Response
where
    F: std::future::Future<Output = Result<maud::Markup, ApiError>>,
{
    if let Err(e) = api.authorize(headers, Scope::Read).await {
        return refused(e);
    }
    match render.await {
        Ok(markup) => Html(markup.into_string()).into_response(),
        Err(e) => refused(e),
    }
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    name: Option<String>,
    state: Option<String>,
}

/// `GET /`: the newest batches.
pub async fn batches(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    page(&api, &headers, pages::batches(&api, q.name, q.state)).await
}

#[derive(Deserialize, Default)]
pub struct SheetQuery {
    state: Option<String>,
    q: Option<String>,
    after: Option<String>,
}

/// `GET /batches/{id}`: the batch and its contact sheet.
pub async fn batch(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<SheetQuery>,
) -> Response {
    page(
        &api,
        &headers,
        pages::batch(&api, &id, q.state, q.q, q.after),
    )
    .await
}

/// `GET /fleet`: workers, queues and schedules.
pub async fn fleet(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    page(&api, &headers, pages::fleet(&api)).await
}

/// `GET /jobs/{id}`: one job and its image.
pub async fn job(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    page(&api, &headers, pages::job(&api, &id)).await
}

#[derive(Deserialize)]
pub struct ActionForm {
    csrf: String,
}

/// `POST /batches/{id}/cancel` and `/retry` from the batch page's buttons.
pub async fn act(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    if !csrf_ok(&api, &form.csrf) {
        return refused(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this form is not from this server (CSRF token missing or wrong); reload the page",
        ));
    }
    if let Err(e) = api.authorize(&headers, Scope::Admin).await {
        return refused(e);
    }
    let done = match action.as_str() {
        "cancel" => super::batches::cancel_batch(&api, &id).await.map(|_| ()),
        "retry" => super::batches::retry_batch(&api, &id, 3).await.map(|_| ()),
        _ => Err(ApiError::not_found("action", super::views::shown(&action))),
    };
    match done {
        Ok(()) => Redirect::to(&format!("/batches/{id}")).into_response(),
        Err(e) => refused(e),
    }
}

/// `GET /login`: the sign-in form.
pub async fn login_form(State(api): State<Arc<Api>>) -> Response {
    Html(pages::login(&csrf_token(&api), None).into_string()).into_response()
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    csrf: String,
}

/// `POST /login`: checks the token and keeps it in an HttpOnly, SameSite=Strict cookie.
pub async fn login(State(api): State<Arc<Api>>, Form(form): Form<LoginForm>) -> Response {
    let again = |message: &str| {
        (
            StatusCode::UNAUTHORIZED,
            Html(pages::login(&csrf_token(&api), Some(message)).into_string()),
        )
            .into_response()
    };
    if !csrf_ok(&api, &form.csrf) {
        return again("the form is stale; try again");
    }
    let presented = form.token.trim();
    let valid = match token::parse(presented) {
        Some((id, secret)) => match api.record.active_token(id).await {
            Ok(Some((_, stored, _))) => token::matches(secret, &stored),
            Ok(None) => false,
            Err(e) => return refused(e.into()),
        },
        None => false,
    };
    if !valid {
        return again("that token is not valid (unknown, malformed or revoked)");
    }
    let cookie =
        format!("{COOKIE}={presented}; HttpOnly; SameSite=Strict; Path=/; Max-Age=2592000");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

/// `POST /logout`: forgets the cookie.
pub async fn logout() -> Response {
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}
