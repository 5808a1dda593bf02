//! `GET /v1/openapi.json`: the API's OpenAPI 3.1 document, derived at compile time
//! from the handlers' `#[utoipa::path]` attributes and the types they answer with, so
//! it cannot drift from what the server does.

use axum::{Json, response::IntoResponse};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use super::{batches, events, images, jobs, submit};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "renderq",
        description = "Bulk text-to-image rendering: submit batches of prompt jobs, follow \
                       them, fetch their images. Tokens are bearer tokens made by \
                       `renderq token create`; scopes nest read < submit < admin.",
    ),
    paths(
        submit::submit_batch,
        batches::list,
        batches::one,
        batches::jobs,
        batches::manifest,
        batches::cancel,
        batches::retry,
        jobs::one,
        jobs::image,
        jobs::cancel,
        images::generate,
        events::events,
    ),
    modifiers(&BearerTokens),
    tags(
        (name = "batches", description = "Submit, follow and act on batches"),
        (name = "jobs", description = "One job, its attempts and its image"),
        (name = "events", description = "Live state changes"),
        (name = "openai", description = "OpenAI's images API"),
    )
)]
pub struct ApiDoc;

/// The `bearer` scheme every path's `security` names.
struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("rq_<id>_<secret>")
                    .description(Some(
                        "A token from `renderq token create`; its scope (read, submit, \
                         admin) must cover the operation's",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document with the server's version, served as JSON. Public: it describes the
/// API, not the record.
pub async fn document() -> impl IntoResponse {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    Json(doc)
}
