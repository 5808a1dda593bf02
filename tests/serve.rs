//! `renderq serve`: the HTTP API on real Postgres, Redis and SQLite, over a real
//! socket. Every endpoint, the one error shape, tokens and scopes, and hostile input
//! that must change nothing.

mod common;

use std::time::Duration;

use common::*;
use renderq::{
    render::{PanicOn, Renderers},
    serve::{self, AuthMode},
    token::{self, Scope},
};
use serde_json::{Value, json};

/// A running API on an ephemeral port, and the directory its store writes to.
type Served = ApiServer;

async fn serve_on(env: &Env, auth: AuthMode, max_body_bytes: usize) -> Served {
    serve_with(env, auth, max_body_bytes, Duration::from_secs(30)).await
}

async fn serve_with(
    env: &Env,
    auth: AuthMode,
    max_body_bytes: usize,
    generation_timeout: Duration,
) -> Served {
    ApiServer::start(env, auth, max_body_bytes, generation_timeout).await
}

/// What the tests do with a server.
trait Requests {
    async fn get(&self, path: &str) -> (u16, Value);
    async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value);
    async fn work(&self, env: &Env, n: usize, renderers: Renderers);
}

impl Requests for Served {
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Runs a worker on the environment until `n` jobs are terminal.
    async fn work(&self, env: &Env, n: usize, renderers: Renderers) {
        let (stop, handle) = env.spawn_worker(env.config(), self.store.clone(), renderers);
        env.wait_terminal(n, Duration::from_secs(60)).await;
        stop.cancel();
        handle.await.unwrap();
    }
}

fn lines(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(r#"{{"prompt":"red shoe {i}","width":64,"height":64,"model":"placeholder"}}"#)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `code` of an error answer, checking its shape on the way.
fn code(body: &Value) -> &str {
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    e["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

async fn submit_read_page_and_fetch(env: Env) {
    let s = serve_on(&env, AuthMode::Off, serve::DEFAULT_MAX_BODY_BYTES).await;
    let (status, body) = s
        .post("/v1/batches?name=shoes-fall", "application/jsonl", lines(5))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["jobs"], 5);
    let batch = body["batch_id"].as_str().unwrap().to_string();

    // The batch, queued, in the list and through the name filter, and not among the done.
    let (_, b) = s.get(&format!("/v1/batches/{batch}")).await;
    assert_eq!(b["name"], "shoes-fall");
    assert_eq!(b["queue"], env.queue.as_str());
    assert_eq!(b["total"], 5);
    assert_eq!(b["counts"]["queued"], 5);
    assert_eq!(b["done"], false);
    let (_, list) = s.get("/v1/batches?name=SHOES").await;
    assert_eq!(list["batches"][0]["id"], batch.as_str());
    let (_, list) = s.get("/v1/batches?name=hats").await;
    assert_eq!(list["batches"].as_array().unwrap().len(), 0);
    let (_, list) = s.get("/v1/batches?state=done").await;
    assert_eq!(list["batches"].as_array().unwrap().len(), 0);

    // Pages of two by cursor give every job once, in id order.
    let mut seen = Vec::new();
    let mut path = format!("/v1/batches/{batch}/jobs?limit=2");
    loop {
        let (status, page) = s.get(&path).await;
        assert_eq!(status, 200, "{page}");
        for j in page["jobs"].as_array().unwrap() {
            seen.push(j["id"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/batches/{batch}/jobs?limit=2&after={next}"),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted);
    assert_eq!(seen.len(), 5);
    let (_, found) = s.get(&format!("/v1/batches/{batch}/jobs?q=SHOE%203")).await;
    let found = found["jobs"].as_array().unwrap().clone();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["prompt"], "red shoe 3");

    s.work(&env, 5, Renderers::builtin(0)).await;

    let (_, b) = s.get(&format!("/v1/batches/{batch}")).await;
    assert_eq!(b["done"], true, "{b}");
    assert_eq!(b["counts"]["succeeded"], 5);
    assert_eq!(b["progress"], 1.0);
    assert!(b["jobs_per_second"].as_f64().unwrap() > 0.0);
    assert!(b["finished_at"].is_string());
    let (_, done) = s.get("/v1/batches?state=done").await;
    assert_eq!(done["batches"][0]["id"], batch.as_str());
    let (_, ok) = s
        .get(&format!("/v1/batches/{batch}/jobs?state=succeeded"))
        .await;
    assert_eq!(ok["jobs"].as_array().unwrap().len(), 5);

    // One job in full, and its image: the very bytes the store holds.
    let job = &found[0]["id"];
    let (status, j) = s.get(&format!("/v1/jobs/{}", job.as_str().unwrap())).await;
    assert_eq!(status, 200);
    assert_eq!(j["state"], "succeeded");
    assert_eq!(j["attempt"], 1);
    assert_eq!(j["spec"]["prompt"], "red shoe 3");
    assert_eq!(j["max_attempts"], 3);
    assert!(j["worker"].is_string() && j["started_at"].is_string() && j["finished_at"].is_string());
    let key = j["object_key"].as_str().unwrap();
    let image = s
        .http
        .get(format!("{}{}", s.base, j["image"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(image.status(), 200);
    assert_eq!(image.headers()["content-type"], "image/png");
    let bytes = image.bytes().await.unwrap();
    let mut stored = Vec::new();
    s.store.read_into(key, 1 << 30, &mut stored).await.unwrap();
    assert_eq!(bytes.as_ref(), stored.as_slice());
    assert!(s.dir.path().exists());

    // The manifest: a header and a row per job, as `renderq manifest` writes it.
    let csv = s
        .http
        .get(format!("{}/v1/batches/{batch}/manifest", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = csv.text().await.unwrap();
    assert_eq!(csv.lines().count(), 6, "{csv}");
    assert!(csv.lines().next().unwrap().contains("job_id"));
    assert_eq!(csv.matches("succeeded").count(), 5);
    let jsonl = s
        .http
        .get(format!(
            "{}/v1/batches/{batch}/manifest?format=jsonl",
            s.base
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rows: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r["object_key"].is_string()));
}

async fn csv_and_json_bodies(env: Env) {
    let s = serve_on(&env, AuthMode::Off, serve::DEFAULT_MAX_BODY_BYTES).await;
    let csv = "sku,name\nA1,red shoe\nB2,blue hat\n";
    let (status, body) = s
        .post(
            "/v1/batches?template=photo%20of%20a%20{name}&variants=2&key=shop/{sku}-{variant}&model=noop",
            "text/csv",
            csv,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["jobs"], 4);
    let batch = body["batch_id"].as_str().unwrap();
    let (_, page) = s.get(&format!("/v1/batches/{batch}/jobs?q=blue")).await;
    let page = page["jobs"].as_array().unwrap().clone();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0]["prompt"], "photo of a blue hat");
    assert_eq!(page[0]["metadata"]["sku"], "B2");

    // A JSON array, and an object with the fields beside the jobs.
    let (status, body) = s
        .post(
            "/v1/batches?name=arr",
            "application/json",
            json!([{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}]).to_string(),
        )
        .await;
    assert_eq!((status, body["jobs"].clone()), (201, json!(3)), "{body}");
    let (status, body) = s
        .post(
            "/v1/batches",
            "application/json",
            json!({"name": "obj", "steps": 7, "jobs": [{"prompt": "a"}]}).to_string(),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let batch = body["batch_id"].as_str().unwrap();
    let (_, b) = s.get(&format!("/v1/batches/{batch}")).await;
    assert_eq!(b["name"], "obj");
    let (_, page) = s.get(&format!("/v1/batches/{batch}/jobs")).await;
    let id = page["jobs"][0]["id"].as_str().unwrap();
    let (_, j) = s.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(j["spec"]["steps"], 7, "the body's defaults apply: {j}");
}

async fn hostile_input_changes_nothing(env: Env) {
    let s = serve_on(&env, AuthMode::Off, 4096).await;
    let bad_line = format!(
        "{}\n{{\"prompt\":\"ok\",\"width\":999999}}\n{{\"prompt\":\"\"}}",
        lines(1)
    );
    let (status, body) = s.post("/v1/batches", "application/jsonl", bad_line).await;
    assert_eq!((status, code(&body)), (422, "invalid_jobs"), "{body}");
    let first = &body["error"]["lines"]["first"];
    assert_eq!(first[0]["line"], 2);
    assert_eq!(first[0]["field"], "width");
    assert_eq!(first[1]["line"], 3);
    assert_eq!(first[1]["field"], "prompt");
    assert_eq!(body["error"]["lines"]["total"], 2);

    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "/v1/batches",
            "application/json",
            "{not json".into(),
            400,
            "bad_request",
        ),
        (
            "/v1/batches",
            "application/json",
            "42".into(),
            400,
            "bad_request",
        ),
        (
            "/v1/batches",
            "application/json",
            r#"{"jobs":[],"colour":1}"#.into(),
            400,
            "bad_request",
        ),
        (
            "/v1/batches",
            "text/csv",
            "a,b\n1,2\n".into(),
            400,
            "invalid_options",
        ),
        (
            "/v1/batches?template={missing}",
            "text/csv",
            "a,b\n1,2\n".into(),
            422,
            "invalid_jobs",
        ),
        (
            "/v1/batches?variants=lots",
            "application/jsonl",
            lines(1),
            400,
            "bad_request",
        ),
        (
            "/v1/batches?scheduler=fast",
            "application/jsonl",
            lines(1),
            400,
            "bad_request",
        ),
        (
            "/v1/batches?max_attempts=0",
            "application/jsonl",
            lines(1),
            400,
            "bad_request",
        ),
        (
            "/v1/batches?webhook=ftp://x",
            "application/jsonl",
            lines(1),
            400,
            "bad_request",
        ),
        (
            "/v1/batches",
            "application/xml",
            "<jobs/>".into(),
            415,
            "unsupported_media_type",
        ),
        ("/v1/batches", "application/jsonl", "".into(), 400, "empty"),
        (
            "/v1/batches",
            "application/jsonl",
            lines(200),
            413,
            "too_large",
        ),
        (
            "/v1/batches/not-a-uuid/cancel",
            "application/json",
            "".into(),
            400,
            "bad_request",
        ),
    ];
    for (path, ct, body, want, want_code) in cases {
        let (status, answer) = s.post(path, ct, body).await;
        assert_eq!(
            (status, code(&answer)),
            (want, want_code),
            "{path} {ct}: {answer}"
        );
    }
    let unknown = uuid::Uuid::now_v7();
    for (path, want) in [
        ("/v1/batches/..%2F..%2Fetc%2Fpasswd".to_string(), 400),
        (format!("/v1/batches/{unknown}"), 404),
        (format!("/v1/batches/{unknown}/jobs"), 404),
        (format!("/v1/jobs/{unknown}"), 404),
        (format!("/v1/jobs/{unknown}/image"), 404),
        (format!("/v1/batches/{unknown}/manifest"), 404),
        ("/v1/batches?before=zzz".into(), 400),
        ("/v1/batches?limit=0".into(), 400),
        ("/v1/batches?limit=100000".into(), 400),
        ("/v1/batches?state=sideways".into(), 400),
        (format!("/v1/batches/{unknown}/jobs?after=%27%3B--"), 400),
        (format!("/v1/batches/{unknown}/manifest?format=xlsx"), 400),
        ("/v1/nothing".into(), 404),
    ] {
        let (status, answer) = s.get(&path).await;
        assert_eq!(status, want, "{path}: {answer}");
        code(&answer);
    }
    // Nothing above made a batch, a job or a stream entry.
    assert!(env.rows().await.is_empty());
    let (_, list) = s.get("/v1/batches").await;
    assert_eq!(list["batches"].as_array().unwrap().len(), 0);
    env.assert_dispatch_empty().await;
}

async fn cancel_and_retry(env: Env) {
    let s = serve_on(&env, AuthMode::Off, serve::DEFAULT_MAX_BODY_BYTES).await;
    let body =
        "{\"prompt\":\"fine\",\"model\":\"noop\"}\n{\"prompt\":\"poison pill\",\"model\":\"noop\"}";
    let (_, made) = s
        .post("/v1/batches?max_attempts=1", "application/jsonl", body)
        .await;
    let batch = made["batch_id"].as_str().unwrap().to_string();
    s.work(
        &env,
        2,
        Renderers::builtin_panicking(0, PanicOn::new(Some("poison".into()))),
    )
    .await;
    let (_, b) = s.get(&format!("/v1/batches/{batch}")).await;
    assert_eq!(
        (
            b["counts"]["succeeded"].clone(),
            b["counts"]["failed"].clone()
        ),
        (json!(1), json!(1)),
        "{b}"
    );
    let (_, failed) = s
        .get(&format!("/v1/batches/{batch}/jobs?state=failed"))
        .await;
    assert!(
        failed["jobs"][0]["error"]
            .as_str()
            .unwrap()
            .contains("poison"),
        "{failed}"
    );

    // Retry puts the failed job back: queued in the record and dispatched again.
    let (status, r) = s
        .post(
            &format!("/v1/batches/{batch}/retry"),
            "application/json",
            "",
        )
        .await;
    assert_eq!((status, r["requeued"].clone()), (200, json!(1)), "{r}");
    let (_, b) = s.get(&format!("/v1/batches/{batch}")).await;
    assert_eq!(b["counts"]["queued"], 1);
    assert_eq!(b["done"], false);
    s.work(&env, 2, Renderers::builtin(0)).await;
    let (_, b) = s.get(&format!("/v1/batches/{batch}")).await;
    assert_eq!(b["counts"]["succeeded"], 2, "{b}");

    // The retried job keeps its history: the failed attempt (kept when it ended),
    // then the one that succeeded (the job's own row).
    let id = failed["jobs"][0]["id"].as_str().unwrap();
    let (_, job) = s.get(&format!("/v1/jobs/{id}")).await;
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{job}");
    let (first, second) = (&attempts[0], &attempts[1]);
    assert_eq!(
        (first["attempt"].clone(), first["outcome"].clone()),
        (json!(1), json!("failed")),
        "{job}"
    );
    assert!(first["error"].as_str().unwrap().contains("poison"), "{job}");
    assert!(
        first["worker"].is_string() && first["ended_at"].is_string(),
        "{job}"
    );
    assert!(
        first["started_at"].as_str() <= first["ended_at"].as_str(),
        "{job}"
    );
    assert_eq!(
        (
            second["attempt"].clone(),
            second["outcome"].clone(),
            second["error"].clone()
        ),
        (json!(2), json!("succeeded"), Value::Null),
        "{job}"
    );
    assert!(
        second["ended_at"].as_str() >= first["ended_at"].as_str(),
        "{job}"
    );
    // The batch's throughput and start are read with its counts.
    assert!(b["jobs_per_second"].as_f64().unwrap() > 0.0, "{b}");
    assert!(
        b["started_at"].is_string() && b["eta_seconds"].is_null(),
        "{b}"
    );

    // Cancel one job, then the rest of another batch; the batch then ends.
    let (_, made) = s.post("/v1/batches", "application/jsonl", lines(3)).await;
    let batch = made["batch_id"].as_str().unwrap().to_string();
    let (_, page) = s.get(&format!("/v1/batches/{batch}/jobs")).await;
    let one = page["jobs"][0]["id"].as_str().unwrap();
    let (status, c) = s
        .post(&format!("/v1/jobs/{one}/cancel"), "application/json", "")
        .await;
    assert_eq!((status, c["cancelled"].clone()), (200, json!(1)), "{c}");
    let (_, c) = s
        .post(
            &format!("/v1/batches/{batch}/cancel"),
            "application/json",
            "",
        )
        .await;
    assert_eq!(
        (c["cancelled"].clone(), c["batch_finished"].clone()),
        (json!(2), json!(true)),
        "{c}"
    );
    let (_, b) = s.get(&format!("/v1/batches/{batch}")).await;
    assert_eq!(
        (b["counts"]["cancelled"].clone(), b["done"].clone()),
        (json!(3), json!(true))
    );
    let (status, e) = s.get(&format!("/v1/jobs/{one}/image")).await;
    assert_eq!((status, code(&e)), (409, "no_image"));
}

async fn openai_images_endpoint(env: Env) {
    let path = "/v1/images/generations";
    let s = serve_on(&env, AuthMode::Off, serve::DEFAULT_MAX_BODY_BYTES).await;
    let (stop, worker) = env.spawn_worker(fast_config(), s.store.clone(), Renderers::builtin(0));
    let request = json!({
        "prompt": "a brass lamp", "n": 2, "size": "96x64", "response_format": "b64_json",
        "model": "placeholder", "seed": 7, "negative_prompt": "blur",
        "num_inference_steps": 4, "guidance_scale": 2.5, "quality": "standard", "user": "u1",
    });
    let (status, answer) = s.post(path, "application/json", request.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["created"].as_i64().unwrap() > 0);
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    use base64::Engine;
    let images: Vec<image::RgbImage> = data
        .iter()
        .map(|d| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(d["b64_json"].as_str().unwrap())
                .unwrap();
            image::load_from_memory(&bytes).unwrap().to_rgb8()
        })
        .collect();
    assert_eq!(images[0].dimensions(), (96, 64));
    assert_ne!(images[0], images[1], "seeds 7 and 8 draw different images");
    let seeds: Vec<u64> = env
        .rows()
        .await
        .iter()
        .filter(|r| r.prompt == "a brass lamp")
        .map(|r| r.seed)
        .collect();
    assert_eq!(seeds, vec![7, 8]);

    let (status, answer) = s
        .post(
            path,
            "application/json",
            json!({"prompt": "a chair", "size": "64x64"}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let url = answer["data"][0]["url"].as_str().unwrap();
    let image = s.http.get(url).send().await.unwrap();
    assert_eq!(image.status(), 200);
    let image = image::load_from_memory(&image.bytes().await.unwrap()).unwrap();
    assert_eq!((image.width(), image.height()), (64, 64));

    for (body, want, want_code) in [
        (json!({"prompt": "x", "n": 0}), 400, "bad_request"),
        (json!({"prompt": "x", "n": 1000}), 400, "bad_request"),
        (json!({"prompt": "x", "size": "large"}), 400, "bad_request"),
        (
            json!({"prompt": "x", "response_format": "png"}),
            400,
            "bad_request",
        ),
        (
            json!({"prompt": "x", "size": "99999x64"}),
            422,
            "invalid_jobs",
        ),
        (json!({"prompt": ""}), 422, "invalid_jobs"),
        (json!({"n": 1}), 400, "bad_request"),
    ] {
        let (status, e) = s.post(path, "application/json", body.to_string()).await;
        assert_eq!((status, code(&e)), (want, want_code), "{body}: {e}");
    }
    stop.cancel();
    worker.await.unwrap();

    // No worker now: the answer times out, naming the batch that holds the job.
    let before = env.rows().await.len();
    let s = serve_with(
        &env,
        AuthMode::Off,
        serve::DEFAULT_MAX_BODY_BYTES,
        Duration::from_secs(1),
    )
    .await;
    let (status, e) = s
        .post(
            path,
            "application/json",
            json!({"prompt": "a lamp"}).to_string(),
        )
        .await;
    assert_eq!((status, code(&e)), (504, "timeout"), "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/batches/")
    );
    let rows = env.rows().await;
    assert_eq!(rows.len(), before + 1);
    assert!(
        rows.iter()
            .any(|r| r.prompt == "a lamp" && r.state == renderq::job::JobState::Queued)
    );
}

async fn idempotency_key_makes_one_batch(env: Env) {
    let s = serve_on(&env, AuthMode::Off, serve::DEFAULT_MAX_BODY_BYTES).await;
    let post = |key: &'static str, body: String| {
        let request = s
            .http
            .post(format!("{}/v1/batches?name=keyed", s.base))
            .header("content-type", "application/jsonl")
            .header("idempotency-key", key)
            .body(body);
        async move {
            let r = request.send().await.unwrap();
            let replayed = r.headers().contains_key("idempotent-replayed");
            (
                r.status().as_u16(),
                replayed,
                r.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, replayed, first) = post("order-1", lines(3)).await;
    assert_eq!((status, replayed), (201, false), "{first}");
    let (status, replayed, again) = post("order-1", lines(3)).await;
    assert_eq!((status, replayed), (201, true), "{again}");
    assert_eq!(again["batch_id"], first["batch_id"]);
    assert_eq!(again["jobs"], 3);
    let (status, _, other) = post("order-1", lines(4)).await;
    assert_eq!(
        (status, code(&other)),
        (422, "idempotency_key_reused"),
        "{other}"
    );
    assert_eq!(env.rows().await.len(), 3);

    // Eight at once with one key: one batch, and every answer names it.
    let answers = futures::future::join_all((0..8).map(|_| post("order-2", lines(2)))).await;
    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|(status, _, a)| {
            assert_eq!(*status, 201, "{a}");
            a["batch_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(env.rows().await.len(), 5);
    let (_, list) = s.get("/v1/batches?name=keyed").await;
    assert_eq!(list["batches"].as_array().unwrap().len(), 2);

    // A refused request keeps nothing under its key: the corrected one goes through.
    let (status, _, e) = post("order-3", "{\"prompt\":\"\"}".into()).await;
    assert_eq!((status, code(&e)), (422, "invalid_jobs"));
    let (status, replayed, ok) = post("order-3", lines(1)).await;
    assert_eq!((status, replayed), (201, false), "{ok}");
    let (status, _, e) = post("bad key with spaces", lines(1)).await;
    assert_eq!((status, code(&e)), (400, "bad_request"));
    assert_eq!(env.rows().await.len(), 6);
}

/// Reads server-sent events: `(event, data)` pairs as they arrive.
struct Events {
    stream: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    /// Keep-alives arrive every 15 s: the test fails past this, not at the first silence.
    deadline: tokio::time::Instant,
}

impl Events {
    async fn next(&mut self) -> (String, Value) {
        use futures::StreamExt;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut data) = (String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event:") {
                        event = e.trim().to_string();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return (event, serde_json::from_str(&data).unwrap());
            }
            let chunk = tokio::time::timeout_at(self.deadline, self.stream.next())
                .await
                .expect("the events expected within 60 s")
                .expect("the stream stays open")
                .unwrap();
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

async fn events_follow_a_batch(env: Env) {
    let s = serve_on(&env, AuthMode::Off, serve::DEFAULT_MAX_BODY_BYTES).await;
    let (_, made) = s.post("/v1/batches", "application/jsonl", lines(4)).await;
    let batch = made["batch_id"].as_str().unwrap().to_string();
    let (_, other) = s.post("/v1/batches", "application/jsonl", lines(2)).await;
    let other = other["batch_id"].as_str().unwrap().to_string();
    let response = s
        .http
        .get(format!("{}/v1/events?batch={batch}", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = Events {
        stream: Box::pin(response.bytes_stream()),
        buffer: String::new(),
        deadline: tokio::time::Instant::now() + Duration::from_secs(60),
    };
    let (kind, first) = events.next().await;
    assert_eq!(kind, "progress");
    assert_eq!(
        (first["id"].as_str(), first["counts"]["queued"].as_i64()),
        (Some(batch.as_str()), Some(4))
    );
    // Give the shared LISTEN connection a moment to be listening before work starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (stop, worker) = env.spawn_worker(fast_config(), s.store.clone(), Renderers::builtin(0));
    let mut succeeded_seen = Vec::new();
    let mut job_done = std::collections::BTreeSet::new();
    let mut batch_done = false;
    loop {
        let (kind, data) = events.next().await;
        assert!(
            !data.to_string().contains(&other),
            "an event of another batch: {data}"
        );
        match kind.as_str() {
            "progress" => {
                assert_eq!(data["id"], batch.as_str());
                succeeded_seen.push(data["counts"]["succeeded"].as_i64().unwrap());
                if data["done"] == true {
                    break;
                }
            }
            "job" => {
                assert_eq!(data["batch_id"], batch.as_str());
                if data["state"] == "succeeded" {
                    job_done.insert(data["job_id"].as_str().unwrap().to_string());
                }
            }
            "batch" => batch_done = data["state"] == "done",
            other => panic!("unexpected event {other}: {data}"),
        }
    }
    assert_eq!(succeeded_seen.last(), Some(&4));
    assert!(
        succeeded_seen.windows(2).all(|w| w[0] < w[1]),
        "{succeeded_seen:?}"
    );
    // Every backend tells each job's success and the batch's end: Postgres as they
    // happen (the progress poll may see the end before the last notifications are
    // read), SQLite from the same reads as the progress, right after it.
    while job_done.len() < 4 || !batch_done {
        let (kind, data) = events.next().await;
        match kind.as_str() {
            "job" if data["state"] == "succeeded" => {
                job_done.insert(data["job_id"].as_str().unwrap().to_string());
            }
            "batch" => batch_done = data["state"] == "done",
            _ => {}
        }
    }
    assert_eq!(job_done.len(), 4);
    stop.cancel();
    worker.await.unwrap();
}

conformance!(
    events_follow_a_batch,
    idempotency_key_makes_one_batch,
    openai_images_endpoint,
    submit_read_page_and_fetch,
    csv_and_json_bodies,
    hostile_input_changes_nothing
);

// Longer than the poison job's panic takes with its backtrace on a loaded machine:
// a lapsed lease would hand the batch over and, at one attempt, fail the good job.
conformance!(lease = Duration::from_secs(5); cancel_and_retry);

/// Every endpoint of the API, as the router serves it.
const ENDPOINTS: &[(&str, &str)] = &[
    ("get", "/v1/batches"),
    ("post", "/v1/batches"),
    ("get", "/v1/batches/{id}"),
    ("get", "/v1/batches/{id}/jobs"),
    ("get", "/v1/batches/{id}/manifest"),
    ("post", "/v1/batches/{id}/cancel"),
    ("post", "/v1/batches/{id}/retry"),
    ("get", "/v1/jobs/{id}"),
    ("get", "/v1/jobs/{id}/image"),
    ("post", "/v1/jobs/{id}/cancel"),
    ("post", "/v1/images/generations"),
    ("get", "/v1/events"),
];

/// `/v1/openapi.json` describes every endpoint, each described path is served (no
/// "no such endpoint"), and the answers' types are in it. It is public: it describes
/// the API, not the record.
#[tokio::test]
async fn the_openapi_document_describes_the_router() {
    let env = Env::with(Kind::Sqlite).await;
    let s = serve_on(&env, AuthMode::Required, serve::DEFAULT_MAX_BODY_BYTES).await;
    let (status, doc) = s.get("/v1/openapi.json").await;
    assert_eq!(status, 200, "{doc}");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let mut described = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                described.push((method.clone(), path.clone()));
            }
        }
    }
    described.sort();
    let mut expected: Vec<(String, String)> = ENDPOINTS
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    expected.sort();
    assert_eq!(described, expected);
    let http = reqwest::Client::new();
    let id = uuid::Uuid::now_v7();
    for (method, path) in ENDPOINTS {
        let url = format!("{}{}", s.base, path.replace("{id}", &id.to_string()));
        let r = match *method {
            "get" => http.get(&url),
            _ => http.post(&url),
        };
        let r = r.send().await.unwrap();
        // Required auth answers 401 before anything else on a served route; an
        // unserved one would be 404 or 405.
        assert_eq!(r.status(), 401, "{method} {path}");
    }
    // Each operation names its scope and answers errors in the one shape.
    for (method, path) in ENDPOINTS {
        let op = &doc["paths"][path][method];
        let scopes = op["security"][0]["bearer"].as_array().unwrap();
        assert_eq!(scopes.len(), 1, "{method} {path}");
        assert_eq!(
            op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{method} {path}"
        );
    }
    let schemas = &doc["components"]["schemas"];
    for name in [
        "Batch",
        "JobDetailView",
        "Attempt",
        "JobSpec",
        "Submitted",
        "Generated",
    ] {
        assert!(schemas[name].is_object(), "{name} missing");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // The job JSON's fields are the job JSON's.
    let spec = schemas["JobSpec"]["properties"].as_object().unwrap();
    for field in [
        "prompt",
        "width",
        "height",
        "steps",
        "seed",
        "model",
        "scheduler",
        "metadata",
    ] {
        assert!(spec.contains_key(field), "JobSpec lacks {field}");
    }
    assert_eq!(schemas["JobSpec"]["required"], json!(["prompt"]));
}

/// A token made the way `renderq token create` makes it.
async fn token_for(env: &Env, scope: Scope, name: &str) -> String {
    let t = token::generate();
    env.record
        .create_token(&t.id, name, scope, &t.secret_hash)
        .await
        .unwrap();
    t.text
}

async fn send(
    s: &Served,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let mut r = s.http.request(method, format!("{}{path}", s.base));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if path == "/v1/batches" {
        r = r.header("content-type", "application/jsonl").body(lines(1));
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn tokens_and_scopes() {
    let env = Env::with(Kind::PgRedis).await;
    let s = serve_on(&env, AuthMode::Required, serve::DEFAULT_MAX_BODY_BYTES).await;
    let (get, post) = (reqwest::Method::GET, reqwest::Method::POST);
    let read = token_for(&env, Scope::Read, "dashboards").await;
    let submit = token_for(&env, Scope::Submit, "ci").await;
    let admin = token_for(&env, Scope::Admin, "ops").await;

    let (status, e) = send(&s, get.clone(), "/v1/batches", None).await;
    assert_eq!((status, code(&e)), (401, "unauthorized"));
    assert_eq!(
        send(&s, get.clone(), "/v1/batches", Some(&read)).await.0,
        200
    );
    let (status, e) = send(&s, post.clone(), "/v1/batches", Some(&read)).await;
    assert_eq!((status, code(&e)), (403, "forbidden"));
    let (status, made) = send(&s, post.clone(), "/v1/batches", Some(&submit)).await;
    assert_eq!(status, 201, "{made}");
    let cancel = format!("/v1/batches/{}/cancel", made["batch_id"].as_str().unwrap());
    assert_eq!(send(&s, post.clone(), &cancel, Some(&submit)).await.0, 403);
    assert_eq!(send(&s, post.clone(), &cancel, Some(&read)).await.0, 403);
    assert_eq!(send(&s, post.clone(), &cancel, Some(&admin)).await.0, 200);

    // A right id with a wrong secret, a made-up token, and a revoked one.
    let (id, _) = token::parse(&admin).unwrap();
    let forged = format!("rq_{id}_{}", "0".repeat(64));
    for bad in [forged.as_str(), "rq_nonsense", "Bearer"] {
        let (status, e) = send(&s, get.clone(), "/v1/batches", Some(bad)).await;
        assert_eq!((status, code(&e)), (401, "unauthorized"), "{bad}");
        assert!(
            !e.to_string().contains(id) || bad != forged,
            "no echo of the token"
        );
    }
    assert_eq!(env.record.revoke_token("ci").await.unwrap(), 1);
    assert_eq!(
        send(&s, post.clone(), "/v1/batches", Some(&submit)).await.0,
        401
    );
    let listed = env.record.tokens().await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(
        listed
            .iter()
            .any(|t| t.name == "ci" && t.revoked_at.is_some())
    );
    // Only hashes are stored: no listed field holds a secret.
    let (_, secret) = token::parse(&read).unwrap();
    assert!(!format!("{listed:?}").contains(secret));
}

#[tokio::test]
async fn a_loopback_server_is_open_until_a_token_exists() {
    let env = Env::with(Kind::Sqlite).await;
    let s = serve_on(&env, AuthMode::OnceAnyToken, serve::DEFAULT_MAX_BODY_BYTES).await;
    assert_eq!(
        send(&s, reqwest::Method::GET, "/v1/batches", None).await.0,
        200
    );
    let read = token_for(&env, Scope::Read, "me").await;
    assert_eq!(
        send(&s, reqwest::Method::GET, "/v1/batches", None).await.0,
        401
    );
    assert_eq!(
        send(&s, reqwest::Method::GET, "/v1/batches", Some(&read))
            .await
            .0,
        200
    );
}

/// The binary end to end: `token create` prints a token `serve` then accepts; `serve`
/// refuses an address other machines reach while the record holds no token; SIGTERM
/// stops it with exit 0.
#[tokio::test]
async fn the_serve_and_token_commands() {
    let env = Env::with(Kind::PgRedis).await;
    let dir = tempfile::tempdir().unwrap();
    let out = env
        .renderq()
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env("RENDERQ_STORE", dir.path())
        .output()
        .unwrap();
    let (code, text) = exit_and_text(out);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("renderq token create"), "{text}");

    let out = env
        .renderq()
        .args(["token", "create", "--scope", "submit", "--name", "ci"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", exit_and_text(out).1);
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token::parse(&token).is_some(), "{token}");
    let listed = env.renderq().args(["token", "list"]).output().unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.contains("submit") && listed.contains("ci"),
        "{listed}"
    );
    assert!(!listed.contains(token::parse(&token).unwrap().1));

    let port = drill::free_port();
    let mut server = env
        .renderq()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("RENDERQ_STORE", dir.path())
        .spawn()
        .unwrap();
    drill::wait_port(port).await;
    let http = reqwest::Client::new();
    // Probed like a worker: liveness, readiness (record and dispatch answer), metrics.
    for path in ["livez", "readyz", "metrics"] {
        let r = http
            .get(format!("http://127.0.0.1:{port}/{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "/{path}");
    }
    let url = format!("http://127.0.0.1:{port}/v1/batches");
    let anonymous = http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let made = http
        .post(&url)
        .bearer_auth(&token)
        .body(lines(2))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let made: Value = made.json().await.unwrap();
    assert_eq!(env.rows().await.len(), 2);
    assert_eq!(
        env.rows().await[0].batch_id.unwrap().to_string(),
        made["batch_id"].as_str().unwrap()
    );

    let revoked = env
        .renderq()
        .args(["token", "revoke", "ci"])
        .output()
        .unwrap();
    assert!(revoked.status.success());
    let after = http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(after.status(), 401);

    drill::sh("kill", &["-TERM", &server.id().to_string()]);
    let status = tokio::task::spawn_blocking(move || server.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}
