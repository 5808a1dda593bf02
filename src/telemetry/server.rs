//! The HTTP side: `/livez`, `/readyz` and `/metrics` on the `--listen` address.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};

use super::{Health, metrics};

/// The routes, on `health`.
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(health)
}

/// Binds `addr` and serves [`router`] on it until the process ends. Returns the bound
/// address (port 0 picks a free one).
pub async fn listen(addr: &str, health: Arc<Health>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(health)).await {
            tracing::error!("the health and metrics server stopped: {e}");
        }
    });
    tracing::info!(%bound, "serving /livez, /readyz and /metrics");
    Ok(bound)
}

fn status(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn livez(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let (ok, report) = health.liveness();
    (status(ok), Json(report))
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let (ok, report) = health.readiness().await;
    (status(ok), Json(report))
}

async fn metrics_text() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics().render(),
    )
}
