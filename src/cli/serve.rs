//! `renderq serve`: the HTTP API, on the record, dispatch and store named by the
//! global flags, until SIGTERM / SIGINT.

use std::{process::ExitCode, sync::Arc};

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{Global, connect, signal_shutdown};
use crate::{
    job::Limits,
    serve::{self, Api, AuthMode},
    store,
    telemetry::{self, Health},
    worker::{self, DEFAULT_STALL, WorkerConfig},
};

/// Where to listen, and whether to ask for tokens.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The address to serve the API on (host:port)
    #[arg(long, env = "RENDERQ_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Serve without tokens, even on an address other machines can reach
    #[arg(long)]
    pub no_auth: bool,
    /// The largest request body, in bytes
    #[arg(long, env = "RENDERQ_MAX_BODY_BYTES", default_value_t = serve::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// How long POST /v1/images/generations waits for its images, in seconds
    #[arg(long, env = "RENDERQ_GENERATION_TIMEOUT_SECS", default_value_t = serve::DEFAULT_GENERATION_TIMEOUT.as_secs())]
    pub generation_timeout_secs: u64,
}

pub async fn command(g: &Global, args: ServeArgs) -> Result<ExitCode> {
    let (record, dispatch) = connect(g, WorkerConfig::default().lease).await?;
    let store = store::open(&g.store).await?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot listen there", args.listen))?;
    let bound = listener.local_addr()?;
    let auth = if args.no_auth {
        AuthMode::Off
    } else if serve::is_loopback(&bound) {
        AuthMode::OnceAnyToken
    } else if record.any_active_token().await? {
        AuthMode::Required
    } else {
        bail!(
            "--listen {bound} is reachable from other machines and the record holds no API token: \
             create one with `renderq token create --scope admin --name NAME`, or pass --no-auth"
        );
    };
    // /livez, /readyz (the record and dispatch answer) and /metrics on the same
    // address, so a serve process is probed like a worker.
    let health = Health::new(DEFAULT_STALL);
    worker::probe_record_and_dispatch(&health, record.clone(), dispatch.clone());
    let api = Arc::new(Api {
        record,
        dispatch,
        store: Arc::from(store),
        auth,
        limits: Limits::default(),
        max_body_bytes: args.max_body_bytes,
        generation_timeout: std::time::Duration::from_secs(args.generation_timeout_secs.max(1)),
        csrf_secret: rand::random(),
        events: g
            .database_url
            .as_deref()
            .filter(|u| u.starts_with("postgres"))
            .map(serve::relay_events),
    });
    let stop = CancellationToken::new();
    tokio::spawn(signal_shutdown(stop.clone()));
    let draining = (stop.clone(), health.clone());
    tokio::spawn(async move {
        draining.0.cancelled().await;
        draining.1.drain();
    });
    eprintln!(
        "serving the API on http://{bound}/v1, the dashboard on http://{bound}/ and /livez, /readyz, /metrics (queue `{}`; {})",
        g.queue,
        match auth {
            AuthMode::Off => "no tokens asked (--no-auth)",
            AuthMode::Required => "a token is required",
            AuthMode::OnceAnyToken => "a token is required once one exists",
        }
    );
    let routes = serve::router(api).merge(telemetry::router(health));
    serve::serve(listener, routes, stop).await?;
    Ok(ExitCode::SUCCESS)
}
