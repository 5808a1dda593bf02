//! `renderq bench --api`: the HTTP API's speed on the configured record and dispatch:
//! `POST /v1/batches` of `--jobs` jobs, then `GET /v1/jobs/{id}` from `--api-clients`
//! clients for `--api-secs`, through a real socket and a real token. Server and
//! clients share this process (and its cores). Prints figures; asserts nothing.

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use tokio_util::sync::CancellationToken;

use super::BenchArgs;
use crate::{
    cli::{Global, connect},
    job::Limits,
    serve::{self, Api, AuthMode},
    store,
    token::{self, Scope},
    worker::WorkerConfig,
};

/// Batches posted, to show the spread.
const POSTS: usize = 3;

pub async fn run(g: &Global, args: &BenchArgs) -> Result<ExitCode> {
    let mut g = g.clone();
    g.queue = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (record, dispatch) = connect(&g, WorkerConfig::default().lease).await?;
    println!("queue: {}", g.queue);
    let t = token::generate();
    record
        .create_token(
            &t.id,
            &format!("bench {}", g.queue),
            Scope::Admin,
            &t.secret_hash,
        )
        .await?;
    let api = Arc::new(Api {
        record: record.clone(),
        dispatch: dispatch.clone(),
        store: Arc::from(store::open(&g.store).await?),
        auth: AuthMode::Required,
        limits: Limits::default(),
        max_body_bytes: serve::DEFAULT_MAX_BODY_BYTES,
        generation_timeout: serve::DEFAULT_GENERATION_TIMEOUT,
        csrf_secret: rand::random(),
        events: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    tokio::spawn(serve::serve(listener, serve::router(api), stop.clone()));
    let http = reqwest::Client::new();

    let body: String = (0..args.jobs)
        .map(|i| {
            format!(
                "{{\"prompt\":\"bench job {i}\",\"model\":\"noop\",\"width\":{s},\"height\":{s}}}\n",
                s = args.size
            )
        })
        .collect();
    let mut batches = Vec::new();
    for _ in 0..POSTS {
        let started = Instant::now();
        let r = http
            .post(format!("{base}/v1/batches?name=bench"))
            .bearer_auth(&t.text)
            .header("content-type", "application/jsonl")
            .body(body.clone())
            .send()
            .await?;
        if r.status() != 201 {
            bail!(
                "POST /v1/batches answered {}: {}",
                r.status(),
                r.text().await?
            );
        }
        let secs = started.elapsed().as_secs_f64();
        let answer: serde_json::Value = r.json().await?;
        println!(
            "POST /v1/batches: {} jobs ({} KB) in {secs:.2} s ({:.0} jobs/s)",
            args.jobs,
            body.len() / 1024,
            args.jobs as f64 / secs
        );
        batches.push(answer["batch_id"].as_str().unwrap_or_default().to_string());
    }

    let first = batches.first().cloned().unwrap_or_default();
    let r = http
        .get(format!("{base}/v1/batches/{first}/jobs?limit=500"))
        .bearer_auth(&t.text)
        .send()
        .await?;
    let page: serde_json::Value = r.json().await?;
    let ids: Arc<Vec<String>> = Arc::new(
        page["jobs"]
            .as_array()
            .map(|jobs| {
                jobs.iter()
                    .filter_map(|j| j["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    );
    if ids.is_empty() {
        bail!("the bench batch has no jobs to read");
    }
    let until = Instant::now() + Duration::from_secs_f64(args.api_secs);
    let mut clients = Vec::new();
    let stride = args.api_clients;
    for c in 0..args.api_clients {
        let (http, base, token, ids) = (http.clone(), base.clone(), t.text.clone(), ids.clone());
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = c;
            while Instant::now() < until {
                let started = Instant::now();
                let r = http
                    .get(format!("{base}/v1/jobs/{}", ids[i % ids.len()]))
                    .bearer_auth(&token)
                    .send()
                    .await?;
                let ok = r.status() == 200;
                r.bytes().await?;
                if !ok {
                    bail!("GET /v1/jobs/{{id}} did not answer 200");
                }
                latencies.push(started.elapsed());
                i += stride;
            }
            Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for c in clients {
        latencies.extend(c.await??);
    }
    latencies.sort();
    let pct =
        |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
    println!(
        "GET /v1/jobs/{{id}}: {} reads in {:.1} s ({:.0}/s; {} clients; p50 {:.2} ms, p99 {:.2} ms)",
        latencies.len(),
        args.api_secs,
        latencies.len() as f64 / args.api_secs,
        args.api_clients,
        pct(0.5),
        pct(0.99)
    );
    stop.cancel();
    // The bench's batches are cancelled, its token revoked and its queue emptied.
    for b in &batches {
        if let Ok(id) = b.parse() {
            record.cancel(id).await?;
        }
    }
    record.revoke_token(&t.id).await?;
    dispatch.discard().await?;
    Ok(ExitCode::SUCCESS)
}
