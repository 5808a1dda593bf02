//! The remote renderer (`remote/<name>`) against a real HTTP server started here: an
//! OpenAI-style images endpoint (as SGLang serves GLM-Image) and Zhipu's variant.

mod common;

use std::{
    io::Cursor,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine;
use common::*;
use image::{ImageFormat, Rgb, RgbImage};
use renderq::job::JobState;
use renderq::{
    job::JobId,
    render::{
        RemoteConfig, RemoteRenderer, RenderError, RenderRequest, Renderer, Renderers,
        remote::{Flavor, ResponseFormat},
    },
};
use serde_json::{Value, json};

const KEY: &str = "sk-test-4f1c9a7e";

/// What the server saw and how it behaves.
#[derive(Default)]
struct Seen {
    /// (path, authorization header, body) of every generation request.
    requests: Mutex<Vec<(String, String, Value)>>,
    /// Request times, for Retry-After.
    times: Mutex<Vec<Instant>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    image_fetches: Mutex<Vec<String>>,
}

type Shared = Arc<Seen>;

/// The Authorization header as sent ("" when none).
fn bearer(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// A PNG of the requested size whose colour follows the seed and the prompt's length.
fn png(size: &str, seed: u64, prompt: &str) -> Vec<u8> {
    let (w, h) = size.split_once('x').unwrap();
    let (w, h): (u32, u32) = (w.parse().unwrap(), h.parse().unwrap());
    let img = RgbImage::from_pixel(
        w,
        h,
        Rgb([(seed % 251) as u8, (prompt.len() % 256) as u8, 7]),
    );
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn generate(
    State(seen): State<Shared>,
    Path(scenario): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let auth = bearer(&headers);
    let n = {
        let mut r = seen.requests.lock().unwrap();
        r.push((scenario.clone(), auth.clone(), body.clone()));
        seen.times.lock().unwrap().push(Instant::now());
        r.len()
    };
    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    seen.most_in_flight.fetch_max(now, Ordering::SeqCst);
    let reply = answer(&scenario, n, &auth, &body).await;
    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
    reply
}

async fn answer(scenario: &str, n: usize, auth: &str, body: &Value) -> Response {
    if auth != format!("Bearer {KEY}") {
        let e = json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}});
        return (StatusCode::UNAUTHORIZED, Json(e)).into_response();
    }
    let size = body["size"].as_str().unwrap_or("1024x1024").to_string();
    let seed = body["seed"].as_u64().unwrap_or(0);
    let prompt = body["prompt"].as_str().unwrap_or("").to_string();
    let b64 = || base64::engine::general_purpose::STANDARD.encode(png(&size, seed, &prompt));
    match scenario {
        // Hostile answers, chosen by the prompt: a body over any sane cap, and an
        // image wider than any job may ask for.
        "ok" if prompt == "HUGE" => {
            let big = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 300_000]);
            Json(json!({"data": [{"b64_json": big}]})).into_response()
        }
        "ok" if prompt == "WIDE" => {
            let wide = base64::engine::general_purpose::STANDARD.encode(png("9000x1", 1, ""));
            Json(json!({"data": [{"b64_json": wide}]})).into_response()
        }
        "ok" => Json(json!({"created": 1, "data": [{"b64_json": b64()}]})).into_response(),
        "slowly" => {
            tokio::time::sleep(Duration::from_millis(150)).await;
            Json(json!({"created": 1, "data": [{"b64_json": b64()}]})).into_response()
        }
        "url" => {
            Json(json!({"data": [{"url": format!("/files/{size}/{seed}.png")}]})).into_response()
        }
        "busy" if n == 1 => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            Json(json!({"error": {"message": "rate limited"}})),
        )
            .into_response(),
        "busy" => Json(json!({"data": [{"b64_json": b64()}]})).into_response(),
        "down" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "NPU device lost"}})),
        )
            .into_response(),
        "refuses" => (
            StatusCode::BAD_REQUEST,
            Json(json!({"detail": format!("size {size} is not supported")})),
        )
            .into_response(),
        "hangs" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            StatusCode::OK.into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Zhipu's variant: no `n`, no `response_format`; the answer is a URL.
async fn zhipu(
    State(seen): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let auth = bearer(&headers);
    seen.requests
        .lock()
        .unwrap()
        .push(("zhipu".into(), auth.clone(), body.clone()));
    if auth != format!("Bearer {KEY}") {
        let e = json!({"error": {"code": "1000", "message": "身份验证失败"}});
        return (StatusCode::UNAUTHORIZED, Json(e)).into_response();
    }
    if body.get("n").is_some() || body.get("response_format").is_some() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": "unknown field"}})),
        )
            .into_response();
    }
    let size = body["size"].as_str().unwrap();
    Json(json!({"created": 1, "data": [{"url": format!("/files/{size}/0.png")}]})).into_response()
}

async fn file(
    State(seen): State<Shared>,
    Path((size, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let auth = bearer(&headers);
    seen.image_fetches.lock().unwrap().push(auth);
    let seed: u64 = name.trim_end_matches(".png").parse().unwrap();
    ([("content-type", "image/png")], png(&size, seed, "")).into_response()
}

/// Starts the server; returns its address and what it sees.
async fn server() -> (String, Shared) {
    let seen: Shared = Arc::default();
    let app = Router::new()
        .route("/{scenario}/v1/images/generations", post(generate))
        .route("/api/paas/v4/images/generations", post(zhipu))
        .route("/files/{size}/{name}", get(file))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

fn config(base: &str) -> RemoteConfig {
    let mut cfg = RemoteConfig::new(base);
    cfg.api_key = Some(KEY.into());
    cfg.backoff = Duration::from_millis(10);
    cfg.attempts = 3;
    cfg
}

fn request(prompt: &str, seed: u64, width: u32, height: u32) -> RenderRequest {
    RenderRequest {
        job_id: JobId::generate(),
        model: "remote/glm-image".into(),
        prompt: prompt.into(),
        negative_prompt: Some("blurry".into()),
        width,
        height,
        steps: Some(30),
        guidance: Some(1.5),
        sampler: Default::default(),
        seed,
    }
}

#[tokio::test]
async fn a_mixed_batch_is_rendered_one_request_per_job() {
    let (addr, seen) = server().await;
    let remote = RemoteRenderer::new(config(&format!("{addr}/ok/v1"))).unwrap();
    let batch = [
        request("a teal armchair", 11, 64, 48),
        request("a brass lamp", 12, 64, 48),
    ];
    let out = remote.render(&batch).await;
    let images: Vec<RgbImage> = out.into_iter().map(Result::unwrap).collect();
    assert_eq!(images[0].dimensions(), (64, 48));
    assert_eq!(
        images[0].get_pixel(0, 0),
        &Rgb([11, 15, 7]),
        "seed and prompt of job 0"
    );
    assert_eq!(
        images[1].get_pixel(0, 0),
        &Rgb([12, 12, 7]),
        "seed and prompt of job 1"
    );
    let requests = seen.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    let (_, auth, body) = requests
        .iter()
        .find(|r| r.2["prompt"] == "a teal armchair")
        .unwrap();
    assert_eq!(auth, &format!("Bearer {KEY}"));
    assert_eq!(
        body["model"], "glm-image",
        "sent without the remote/ prefix"
    );
    assert_eq!(body["size"], "64x48");
    assert_eq!(body["n"], 1);
    assert_eq!(body["response_format"], "b64_json");
    assert_eq!(body["seed"], 11);
    assert_eq!(body["negative_prompt"], "blurry");
    assert_eq!(body["num_inference_steps"], 30);
    assert_eq!(body["guidance_scale"], 1.5);
}

#[tokio::test]
async fn url_answers_are_fetched_from_the_endpoint_with_the_key() {
    let (addr, seen) = server().await;
    let mut cfg = config(&format!("{addr}/url/v1"));
    cfg.response_format = ResponseFormat::Url;
    let remote = RemoteRenderer::new(cfg).unwrap();
    let out = remote.render(&[request("x", 40, 32, 16)]).await;
    let image = out.into_iter().next().unwrap().unwrap();
    assert_eq!(image.dimensions(), (32, 16));
    assert_eq!(image.get_pixel(3, 3), &Rgb([40, 0, 7]));
    assert_eq!(seen.requests.lock().unwrap()[0].2["response_format"], "url");
    assert_eq!(
        *seen.image_fetches.lock().unwrap(),
        vec![format!("Bearer {KEY}")],
        "same origin: the key goes along"
    );
}

#[tokio::test]
async fn the_zhipu_variant_sends_its_own_fields_and_reads_urls() {
    let (addr, seen) = server().await;
    let cfg = config(&format!("{addr}/api/paas/v4"));
    assert_eq!(cfg.flavor, Flavor::Zhipu, "guessed from the URL");
    let remote = RemoteRenderer::new(cfg).unwrap();
    let out = remote
        .render(&[request("茶壶 on a table", 3, 24, 24)])
        .await;
    assert_eq!(out[0].as_ref().unwrap().dimensions(), (24, 24));
    let body = seen.requests.lock().unwrap()[0].2.clone();
    assert_eq!(
        body,
        json!({"model": "glm-image", "prompt": "茶壶 on a table", "size": "24x24"})
    );
}

#[tokio::test]
async fn a_429_is_waited_out_as_retry_after_says_then_succeeds() {
    let (addr, seen) = server().await;
    let remote = RemoteRenderer::new(config(&format!("{addr}/busy/v1"))).unwrap();
    let out = remote.render(&[request("x", 1, 8, 8)]).await;
    assert!(out[0].is_ok(), "{:?}", out[0]);
    let times = seen.times.lock().unwrap().clone();
    assert_eq!(times.len(), 2, "one 429, one success");
    assert!(
        times[1] - times[0] >= Duration::from_millis(950),
        "the second try waited for Retry-After: 1 (waited {:?})",
        times[1] - times[0]
    );
}

#[tokio::test]
async fn server_errors_are_retried_then_reported_as_retry_with_the_servers_words() {
    let (addr, seen) = server().await;
    let remote = RemoteRenderer::new(config(&format!("{addr}/down/v1"))).unwrap();
    let out = remote.render(&[request("x", 1, 8, 8)]).await;
    match &out[0] {
        Err(RenderError::Retry(m)) => {
            assert!(m.contains("NPU device lost"), "{m}");
            assert!(m.contains("500"), "{m}");
            assert!(m.contains("after 3 tries"), "{m}");
        }
        other => panic!("expected a Retry error, got {other:?}"),
    }
    assert_eq!(seen.requests.lock().unwrap().len(), 3, "attempts = 3");
}

#[tokio::test]
async fn other_4xx_answers_fail_at_once_with_the_servers_message() {
    let (addr, seen) = server().await;
    let remote = RemoteRenderer::new(config(&format!("{addr}/refuses/v1"))).unwrap();
    let out = remote.render(&[request("x", 1, 8, 8)]).await;
    match &out[0] {
        Err(RenderError::Abort(m)) => assert!(m.contains("size 8x8 is not supported"), "{m}"),
        other => panic!("expected an Abort error, got {other:?}"),
    }
    assert_eq!(seen.requests.lock().unwrap().len(), 1, "not tried again");
}

#[tokio::test]
async fn a_bad_key_fails_with_the_servers_message_and_the_key_is_never_shown() {
    let (addr, _) = server().await;
    let mut cfg = config(&format!("{addr}/ok/v1"));
    cfg.api_key = Some("sk-wrong-93be11".into());
    let remote = RemoteRenderer::new(cfg).unwrap();
    let out = remote.render(&[request("x", 1, 8, 8)]).await;
    match &out[0] {
        Err(RenderError::Abort(m)) => {
            assert!(m.contains("401"), "{m}");
            assert!(m.contains("Incorrect API key provided"), "{m}");
            assert!(!m.contains("sk-wrong-93be11"), "{m}");
        }
        other => panic!("expected an Abort error, got {other:?}"),
    }
}

/// A key in the endpoint's query string (`?key=…`, as some servers take it) appears
/// in no error, whether the server answered or could not be reached.
#[tokio::test]
async fn a_secret_in_the_endpoint_url_never_reaches_an_error() {
    let (addr, _) = server().await;
    let remote = RemoteRenderer::new(config(&format!(
        "{addr}/refuses/v1?key=hush-4411&region=eu"
    )))
    .unwrap();
    let out = remote.render(&[request("x", 1, 8, 8)]).await;
    match &out[0] {
        Err(RenderError::Abort(m)) => {
            assert!(m.contains("size 8x8 is not supported"), "{m}");
            assert!(!m.contains("hush-4411"), "{m}");
            assert!(m.contains("key=***"), "{m}");
        }
        other => panic!("expected an Abort error, got {other:?}"),
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut cfg = config(&format!("http://127.0.0.1:{port}/v1?token=hush-5522"));
    cfg.attempts = 1;
    let out = RemoteRenderer::new(cfg)
        .unwrap()
        .render(&[request("x", 1, 8, 8)])
        .await;
    match &out[0] {
        Err(RenderError::Retry(m)) => assert!(!m.contains("hush-5522"), "{m}"),
        other => panic!("expected a Retry error, got {other:?}"),
    }
}

/// An answer over the size cap, or an image larger than any job may be, fails its
/// own job with that said; the other jobs of the batch are rendered.
#[tokio::test]
async fn oversized_answers_fail_their_job_alone() {
    let (addr, _) = server().await;
    let mut cfg = config(&format!("{addr}/ok/v1"));
    cfg.max_response_bytes = 64 * 1024;
    let remote = RemoteRenderer::new(cfg).unwrap();
    let out = remote
        .render(&[
            request("fine", 1, 8, 8),
            request("HUGE", 2, 8, 8),
            request("WIDE", 3, 8, 8),
        ])
        .await;
    assert!(out[0].is_ok(), "{:?}", out[0]);
    match &out[1] {
        Err(RenderError::Abort(m)) => assert!(m.contains("more than 65536 bytes"), "{m}"),
        other => panic!("expected an Abort error, got {other:?}"),
    }
    match &out[2] {
        Err(RenderError::Abort(m)) => assert!(m.contains("cannot be read"), "{m}"),
        other => panic!("expected an Abort error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_hanging_endpoint_times_out_as_a_retry() {
    let (addr, _) = server().await;
    let mut cfg = config(&format!("{addr}/hangs/v1"));
    cfg.timeout = Duration::from_millis(300);
    cfg.attempts = 1;
    let remote = RemoteRenderer::new(cfg).unwrap();
    let out = remote.render(&[request("x", 1, 8, 8)]).await;
    match &out[0] {
        Err(RenderError::Retry(m)) => assert!(m.contains("timed out"), "{m}"),
        other => panic!("expected a Retry error, got {other:?}"),
    }
}

#[tokio::test]
async fn requests_in_flight_stay_within_the_endpoints_limit() {
    let (addr, seen) = server().await;
    let mut cfg = config(&format!("{addr}/slowly/v1"));
    cfg.concurrency = 2;
    let remote = RemoteRenderer::new(cfg).unwrap();
    let batch: Vec<_> = (0..8).map(|i| request("x", i, 8, 8)).collect();
    let out = remote.render(&batch).await;
    assert!(out.iter().all(Result::is_ok));
    assert_eq!(seen.most_in_flight.load(Ordering::SeqCst), 2);
}

/// Through the real pipeline: jobs submitted with `remote/<name>` are rendered by the
/// endpoint, stored, and recorded; a job the endpoint refuses fails with its message.
#[tokio::test]
async fn remote_jobs_go_through_the_worker() {
    let env = Env::with(Kind::Sqlite).await;
    let (addr, _) = server().await;
    env.submit(&[
        r#"{"prompt":"a teal armchair","model":"remote/glm-image","width":64,"height":32,"seed":5}"#,
        r#"{"prompt":"a brass lamp","model":"remote/glm-image","width":64,"height":32,"seed":6}"#,
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut renderers = Renderers::builtin(0);
    renderers.insert_remote(RemoteRenderer::new(config(&format!("{addr}/ok/v1"))).unwrap());
    let rows = env
        .work_until_done(2, renderers, dir.path(), Duration::from_secs(30))
        .await;
    for row in &rows {
        assert_eq!(row.state, JobState::Succeeded, "{:?}", row.error);
        let bytes = std::fs::read(dir.path().join(row.output_key.as_deref().unwrap())).unwrap();
        let image = image::load_from_memory(&bytes).unwrap();
        assert_eq!((image.width(), image.height()), (64, 32));
    }
}

/// The worker keeps the endpoint's permits busy across device calls: with one job
/// per call and four permits, four requests are in flight at once (calls run side by
/// side, not one after another).
#[tokio::test]
async fn the_worker_keeps_every_permit_of_the_endpoint_busy() {
    let env = Env::with(Kind::Sqlite).await;
    let (addr, seen) = server().await;
    let lines: Vec<String> = (0..12)
        .map(|i| format!(r#"{{"prompt":"p{i}","model":"remote/m","width":8,"height":8}}"#))
        .collect();
    env.submit(&lines.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let mut cfg = config(&format!("{addr}/slowly/v1"));
    cfg.concurrency = 4;
    let mut renderers = Renderers::builtin(0);
    renderers.insert_remote(RemoteRenderer::new(cfg).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let worker = renderq::worker::WorkerConfig {
        max_batch: 1,
        ..fast_config()
    };
    let (stop, handle) = env.spawn_worker(
        worker,
        Arc::new(renderq::store::DirStore::new(dir.path())),
        renderers,
    );
    let rows = env.wait_terminal(12, Duration::from_secs(30)).await;
    stop.cancel();
    handle.await.unwrap();
    assert!(
        rows.iter().all(|r| r.state == JobState::Succeeded),
        "{rows:?}"
    );
    assert_eq!(seen.most_in_flight.load(Ordering::SeqCst), 4);
}

/// A lane whose endpoint hangs holds up no other lane: the built-in model's jobs
/// finish while the remote ones are still waiting for their answers.
#[tokio::test]
async fn a_hanging_endpoint_holds_up_no_other_model() {
    let env = Env::with(Kind::Sqlite).await;
    let (addr, _) = server().await;
    env.submit(&[
        r#"{"prompt":"stuck","model":"remote/m","width":8,"height":8}"#,
        r#"{"prompt":"a","model":"placeholder","width":8,"height":8}"#,
        r#"{"prompt":"b","model":"placeholder","width":8,"height":8}"#,
    ])
    .await;
    let mut cfg = config(&format!("{addr}/hangs/v1"));
    cfg.timeout = Duration::from_secs(60);
    let mut renderers = Renderers::builtin(0);
    renderers.insert_remote(RemoteRenderer::new(cfg).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (stop, handle) = env.spawn_worker(
        fast_config(),
        Arc::new(renderq::store::DirStore::new(dir.path())),
        renderers,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = env.rows().await;
        let placeholders_done = rows
            .iter()
            .filter(|r| r.prompt != "stuck" && r.state == JobState::Succeeded)
            .count();
        let stuck = rows.iter().find(|r| r.prompt == "stuck").unwrap();
        if placeholders_done == 2 {
            assert_eq!(stuck.state, JobState::Running, "the remote job still waits");
            break;
        }
        assert!(Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    handle.abort();
}

/// The binary reads the endpoint from `RENDERQ_REMOTE_URL` and the key from
/// `RENDERQ_REMOTE_API_KEY`; a wrong key fails the job with the server's words and
/// appears nowhere in the output or the record.
#[tokio::test]
async fn the_binary_serves_remote_models_from_its_environment() {
    let (addr, _) = server().await;
    let dir = tempfile::tempdir().unwrap();
    // The command runs on the blocking pool: this test's runtime serves the endpoint.
    let run = |key: &'static str| {
        let job =
            r#"{"prompt":"a teal armchair","model":"remote/glm-image","width":32,"height":32}"#;
        let mut cmd = run_one_job(dir.path(), job);
        cmd.args(["--remote-attempts", "1"])
            .env("RENDERQ_REMOTE_URL", format!("{addr}/ok/v1"))
            .env("RENDERQ_REMOTE_API_KEY", key);
        async move {
            let out = tokio::task::spawn_blocking(move || cmd.output().unwrap());
            exit_and_text(out.await.unwrap())
        }
    };
    let (code, output) = run(KEY).await;
    assert_eq!(code, Some(0), "{output}");
    let (code, output) = run("sk-wrong-5a5a5a").await;
    assert_ne!(code, Some(0), "{output}");
    assert!(output.contains("Incorrect API key provided"), "{output}");
    assert!(!output.contains("sk-wrong-5a5a5a"), "{output}");
    assert!(!output.contains(KEY), "{output}");
}
