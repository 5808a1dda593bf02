//! Catalogues and batches: CSV with templates, manifests, retry, the `done` event.

mod common;

use std::{
    io::{Read, Write},
    process::Command,
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use common::*;
use image::RgbImage;
use renderq::job::JobState;
use renderq::render::{RenderError, RenderRequest, Renderer, Renderers};

fn renderq(env: &Env, extra: &[(&str, String)]) -> Command {
    let mut c = env.renderq();
    c.envs(extra.iter().map(|(k, v)| (*k, v.as_str())));
    c
}

/// GET over plain HTTP (the presigned URL of the test server), without a client crate.
fn http_get(url: &str) -> (u16, Vec<u8>) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, response[split + 4..].to_vec())
}

#[tokio::test]
async fn a_csv_catalogue_becomes_keyed_variants_and_a_manifest_with_working_urls() {
    let env = Env::new().await;
    let store = s3_store().await;
    let mut s3 = s3_vars();
    s3.push(("RENDERQ_STORE", format!("s3://{}/out", store.bucket())));
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("products.csv");
    std::fs::write(
        &csv,
        "sku,name,color\nA-1,\"armchair, walnut\",\"rouge \"\"vif\"\"\"\nB-2,lampe à poser 💡,bleu\n",
    )
    .unwrap();
    let out = renderq(&env, &s3)
        .args([
            "submit",
            "--template",
            "studio photo of {name} in {color}",
            "--variants",
            "2",
        ])
        .args([
            "--key",
            "{sku}/{variant}",
            "--width",
            "64",
            "--height",
            "48",
            "--format",
            "webp",
        ])
        .arg(&csv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let batch = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    let (stop, h) = env.spawn_worker(fast_config(), store.clone(), Renderers::builtin(0));
    let rows = env.wait_terminal(4, Duration::from_secs(30)).await;
    stop.cancel();
    h.await.unwrap();
    assert!(rows.iter().all(|r| r.state == JobState::Succeeded));
    let keys = s3_keys(&store).await;
    assert_eq!(
        keys,
        [
            "out/A-1/0.webp",
            "out/A-1/1.webp",
            "out/B-2/0.webp",
            "out/B-2/1.webp"
        ]
    );

    let manifest = renderq(&env, &s3)
        .args(["manifest", &batch, "--expires-secs", "600"])
        .output()
        .unwrap();
    assert!(
        manifest.status.success(),
        "{}",
        String::from_utf8_lossy(&manifest.stderr)
    );
    let mut reader = csv::Reader::from_reader(&manifest.stdout[..]);
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(
        header,
        [
            "color",
            "name",
            "sku",
            "job_id",
            "state",
            "object_key",
            "url",
            "seed",
            "error"
        ]
    );
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 4);
    let first = records.iter().find(|r| &r[2] == "A-1").unwrap();
    assert_eq!(&first[1], "armchair, walnut");
    assert_eq!(&first[0], "rouge \"vif\"");
    assert!(records.iter().any(|r| &r[1] == "lampe à poser 💡"));
    let seeds: std::collections::HashSet<_> = records.iter().map(|r| r[7].to_string()).collect();
    assert_eq!(seeds.len(), 4, "a different seed per variant");
    let (status, body) = http_get(&first[6]);
    assert_eq!(status, 200, "the presigned URL works");
    assert_eq!(
        image::guess_format(&body).unwrap(),
        image::ImageFormat::WebP
    );
    let (w, h) = image::load_from_memory(&body)
        .map(|i| (i.width(), i.height()))
        .unwrap();
    assert_eq!((w, h), (64, 48));
    let prompts = env.record.jobs_of_queue(&env.queue).await.unwrap();
    assert!(
        prompts
            .iter()
            .any(|j| j.prompt == "studio photo of armchair, walnut in rouge \"vif\"")
    );
}

#[tokio::test]
async fn bad_catalogues_are_refused_naming_line_and_column_with_nothing_queued() {
    let env = Env::with(Kind::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("products.csv");
    std::fs::write(&csv, "sku,name\nA,chair\nB,\nA,lamp\n").unwrap();
    let run = |args: &[&str]| {
        renderq(&env, &[])
            .arg("submit")
            .args(args)
            .arg(&csv)
            .output()
            .unwrap()
    };
    let out = run(&["--template", "photo of {name} in {colour}"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("`colour`") && err.contains("sku, name"),
        "{err}"
    );
    // Options that cannot be used are refused input too, naming the flag.
    for (args, says) in [
        (&[][..], "--template"),
        (&["--template", "photo of {name"][..], "--template:"),
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let out = run(&["--template", "photo of {name}", "--key", "{sku}"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3: column `name`: is empty"), "{err}");
    assert!(
        err.contains("line 4: field `output_key`") && err.contains("line 2"),
        "{err}"
    );
    let out = run(&[]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--template"),
        "a CSV needs a template"
    );
    assert!(env.rows().await.is_empty());
    assert!(env.record.recent_batches(5).await.unwrap().is_empty());
}

/// Refuses every job until it is told to work.
struct Broken(std::sync::atomic::AtomicBool);
#[async_trait]
impl Renderer for Broken {
    async fn render(&self, batch: &[RenderRequest]) -> Vec<Result<RgbImage, RenderError>> {
        let fixed = self.0.load(std::sync::atomic::Ordering::SeqCst);
        batch
            .iter()
            .map(|r| {
                if fixed {
                    Ok(RgbImage::new(r.width, r.height))
                } else {
                    Err(RenderError::Abort("weights missing".into()))
                }
            })
            .collect()
    }
}

/// Runs a command off the test's runtime thread: a worker spawned on that runtime must
/// keep running meanwhile, or a transaction it holds open (finishing a batch) would
/// block the command forever.
async fn beside_the_worker(mut cmd: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

async fn retry_and_done(env: Env) {
    let done = env
        .submit(&[
            r#"{"prompt":"ok","width":8,"height":8}"#,
            r#"{"prompt":"bad","model":"remote/broken","width":8,"height":8}"#,
        ])
        .await;
    let broken = Arc::new(Broken(false.into()));
    let mut rs = Renderers::builtin(0);
    rs.insert("remote/broken", broken.clone());
    let dir = tempfile::tempdir().unwrap();
    let (stop, h) = env.spawn_worker(
        fast_config(),
        Arc::new(renderq::store::DirStore::new(dir.path())),
        rs,
    );
    env.wait_terminal(2, Duration::from_secs(20)).await;
    let mut status = renderq(&env, &[]);
    status.args(["status", &done.batch.to_string()]);
    let status = beside_the_worker(status).await;
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("weights missing") && text.contains("jobs/s"),
        "{text}"
    );
    broken.0.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut retry = renderq(&env, &[]);
    retry.args(["retry", &done.batch.to_string()]);
    let out = beside_the_worker(retry).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("re-queued 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = env.wait_terminal(2, Duration::from_secs(20)).await;
    stop.cancel();
    h.await.unwrap();
    assert!(
        rows.iter().all(|r| r.state == JobState::Succeeded),
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|r| r.attempt == 2),
        "the retried job ran a second attempt"
    );
}

#[tokio::test]
async fn a_finished_batch_is_announced_once() {
    let env = Env::new().await;
    let mut listener = sqlx::postgres::PgListener::connect(&env.db_url)
        .await
        .unwrap();
    listener.listen("renderq_events").await.unwrap();
    let lines: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"prompt":"j{i}","model":"noop","width":8,"height":8}}"#))
        .collect();
    let done = env
        .submit(&lines.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(renderq::store::DirStore::new(dir.path()));
    let cfg = renderq::worker::WorkerConfig {
        max_batch: 1,
        ..fast_config()
    };
    let (s1, h1) = env.spawn_worker(cfg.clone(), store.clone(), Renderers::builtin(5));
    let (s2, h2) = env.spawn_worker(cfg, store, Renderers::builtin(5));
    env.wait_terminal(20, Duration::from_secs(20)).await;
    let mut done_events = 0;
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1500), listener.recv()).await {
        let v: serde_json::Value = serde_json::from_str(n.payload()).unwrap();
        if v["state"] == "done" {
            assert_eq!(v["batch_id"], done.batch.to_string());
            done_events += 1;
        }
    }
    s1.cancel();
    s2.cancel();
    h1.await.unwrap();
    h2.await.unwrap();
    assert_eq!(done_events, 1);
}

conformance!(retry_and_done);
