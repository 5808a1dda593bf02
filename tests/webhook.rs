//! The batch webhook: a signed summary, retried until the receiver takes it.

mod common;

use std::{
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
use renderq::{
    db::{ClaimRequest, Outcome},
    job::JobId,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A receiver that answers 500 to the first request and 200 after; keeps
/// (signature header, body) of each request.
async fn receiver() -> (u16, Arc<Mutex<Vec<(String, String)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let n = sock.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break (String::new(), String::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    while buf.len() < i + 4 + len {
                        let n = sock.read(&mut chunk).await.unwrap();
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    break (
                        head,
                        String::from_utf8_lossy(&buf[i + 4..i + 4 + len]).to_string(),
                    );
                }
            };
            let signature = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .starts_with("x-renderq-signature:")
                        .then(|| l[20..].trim().to_string())
                })
                .unwrap_or_default();
            let first = {
                let mut seen = log.lock().unwrap();
                seen.push((signature, body));
                seen.len() == 1
            };
            let status = if first {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = sock
                .write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
        }
    });
    (port, seen)
}

#[tokio::test]
async fn a_finished_batch_posts_a_signed_summary_retried_after_a_500() {
    let env = Env::with(Kind::Sqlite).await;
    let (port, seen) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.jsonl");
    std::fs::write(&file, "{\"prompt\":\"a\",\"width\":8,\"height\":8}\n{\"prompt\":\"b\",\"width\":8,\"height\":8}\n").unwrap();
    let renderq = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_renderq"));
        c.env_remove("REDIS_URL")
            .envs(env.vars())
            .env("RENDERQ_STORE", dir.path().join("out"))
            .env("RENDERQ_WEBHOOK_SECRET", "hook-secret");
        c
    };
    let bad = renderq()
        .args(["submit", "--webhook", "ftp://nope"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("http:// or https://"));
    let hook = format!("http://127.0.0.1:{port}/hooks/renderq");
    let out = renderq()
        .args(["submit", "--webhook", &hook])
        .arg(&file)
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
    let mut worker = renderq()
        .arg("worker")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if seen.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(worker.wait().unwrap().success());
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "a 500, then delivered: {seen:?}");
    for (signature, body) in &seen {
        assert_eq!(
            signature,
            &renderq::webhook::signature(b"hook-secret", body.as_bytes())
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["event"], "batch.done");
        assert_eq!(v["batch_id"], batch);
        assert_eq!(
            (v["total"].as_i64(), v["succeeded"].as_i64()),
            (Some(2), Some(2))
        );
    }
}

/// Submits `n` 8×8 jobs as one batch with a webhook to `port`; returns the batch and
/// its job ids.
async fn submit_with_hook(env: &Env, port: u16, n: usize) -> (renderq::job::BatchId, Vec<String>) {
    let lines: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"prompt":"p{i}","width":8,"height":8}}"#))
        .collect();
    let jobs = env.jobs(&lines.iter().map(String::as_str).collect::<Vec<_>>());
    let ids = jobs.iter().map(|j| j.id.to_string()).collect();
    let done = renderq::submit::submit_with_webhook(
        env.record.as_ref(),
        env.dispatch.as_ref(),
        "hooked",
        &jobs,
        3,
        Some(&format!("http://127.0.0.1:{port}/hook")),
    )
    .await
    .unwrap();
    (done.batch, ids)
}

/// Waits until the receiver has seen `n` requests.
async fn wait_seen(seen: &Mutex<Vec<(String, String)>>, n: usize, within: Duration) {
    let end = tokio::time::Instant::now() + within;
    while seen.lock().unwrap().len() < n && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn hook_config() -> renderq::worker::WorkerConfig {
    renderq::worker::WorkerConfig {
        webhook_backoff: Duration::from_millis(20),
        ..fast_config()
    }
}

#[tokio::test]
async fn cancelling_a_batchs_last_job_by_its_id_finishes_the_batch_and_sends_its_webhook() {
    let env = Env::new().await;
    let (port, seen) = receiver().await;
    let (batch, ids) = submit_with_hook(&env, port, 2).await;
    let renderq = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_renderq"))
            .env_remove("RENDERQ_STORE")
            .envs(env.vars())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let cancel = |id: &str| renderq(&["cancel", id]);
    let hook_line = format!("webhook http://127.0.0.1:{port}/hook: ");
    let status = renderq(&["status", &batch.to_string()]);
    assert!(
        status.contains(&format!("{hook_line}sent when the batch finishes")),
        "{status}"
    );
    let first = cancel(&ids[0]);
    assert!(first.contains("cancelled 1"), "{first}");
    let finished = format!("batch {batch} finished");
    assert!(!first.contains(&finished), "a job is left: {first}");
    assert_eq!(env.record.batch_finished_at(batch).await.unwrap(), None);
    let last = cancel(&ids[1]);
    assert!(last.contains(&finished), "{last}");
    assert!(env.record.batch_finished_at(batch).await.unwrap().is_some());
    let status = renderq(&["status", &batch.to_string()]);
    assert!(status.contains(&format!("{hook_line}due")), "{status}");

    // No worker was running when the batch ended; the next one sends the webhook.
    let dir = tempfile::tempdir().unwrap();
    let (stop, h) = env.spawn_worker(
        hook_config(),
        Arc::new(renderq::store::DirStore::new(dir.path())),
        renderq::render::Renderers::builtin(0),
    );
    wait_seen(&seen, 2, Duration::from_secs(10)).await;
    stop.cancel();
    h.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "a 500, then delivered: {seen:?}");
    let v: serde_json::Value = serde_json::from_str(&seen[1].1).unwrap();
    assert_eq!(v["batch_id"], batch.to_string());
    assert_eq!(
        (v["total"].as_i64(), v["cancelled"].as_i64()),
        (Some(2), Some(2))
    );
    let status: Option<String> =
        sqlx::query_scalar("SELECT webhook_status FROM renderq.batches WHERE id = $1")
            .bind(batch.0)
            .fetch_one(&sqlx::PgPool::connect(&env.db_url).await.unwrap())
            .await
            .unwrap();
    assert_eq!(status.as_deref(), Some("delivered (200)"));
    let status = renderq(&["status", &batch.to_string()]);
    assert!(
        status.contains(&format!("{hook_line}delivered (200)")),
        "{status}"
    );
}

/// A worker took the delivery and died before recording its outcome: after
/// `webhook_retake` another worker sends it, and once recorded it is not due again.
async fn a_delivery_whose_worker_died_is_sent_by_another(kind: Kind) {
    let env = Env::with(kind).await;
    let (port, seen) = receiver().await;
    let (batch, ids) = submit_with_hook(&env, port, 2).await;
    // One job fails for good, the other is cancelled: the batch ends.
    let failing = JobId(ids[0].parse().unwrap());
    let request = ClaimRequest {
        id: failing,
        takeover: false,
    };
    let claimed = env.record.claim(&[request], "test").await.unwrap();
    let failure = Outcome::Failed {
        error: "weights missing".into(),
        retry: false,
        backoff_ms: 0,
    };
    env.record
        .record_outcomes(&[(failing, claimed[0].attempt, failure)])
        .await
        .unwrap();
    assert_eq!(env.record.cancel(batch.0).await.unwrap().jobs, 1);
    assert_eq!(
        env.record.finish_batches(&[batch]).await.unwrap(),
        vec![batch]
    );

    let retake = Duration::from_millis(1500);
    let took = env.record.take_webhooks(&env.queue, retake, 64).await;
    assert_eq!(took.unwrap(), vec![batch], "the dying worker takes it");
    let again = env.record.take_webhooks(&env.queue, retake, 64).await;
    assert_eq!(again.unwrap(), vec![], "taken: no one else sends it yet");

    let dir = tempfile::tempdir().unwrap();
    let cfg = renderq::worker::WorkerConfig {
        webhook_retake: retake,
        ..hook_config()
    };
    let (stop, h) = env.spawn_worker(
        cfg,
        Arc::new(renderq::store::DirStore::new(dir.path())),
        renderq::render::Renderers::builtin(0),
    );
    wait_seen(&seen, 2, Duration::from_secs(15)).await;
    stop.cancel();
    h.await.unwrap();
    let bodies: Vec<String> = seen.lock().unwrap().iter().map(|s| s.1.clone()).collect();
    assert_eq!(bodies.len(), 2, "a 500, then delivered: {bodies:?}");
    assert!(bodies.iter().all(|b| b.contains(&batch.to_string())));
    let after = env
        .record
        .take_webhooks(&env.queue, Duration::ZERO, 64)
        .await;
    assert_eq!(after.unwrap(), vec![], "delivered: no longer due");

    // `renderq retry` reopens the batch: its webhook is due again when it ends again.
    let take_now = || env.record.take_webhooks(&env.queue, Duration::ZERO, 64);
    assert_eq!(
        env.record.retry_failed(batch, 1).await.unwrap(),
        vec![failing]
    );
    assert_eq!(env.record.batch_finished_at(batch).await.unwrap(), None);
    assert_eq!(take_now().await.unwrap(), vec![], "not due while it runs");
    assert_eq!(env.record.cancel(batch.0).await.unwrap().jobs, 1);
    assert_eq!(
        env.record.finish_batches(&[batch]).await.unwrap(),
        vec![batch]
    );
    assert_eq!(take_now().await.unwrap(), vec![batch], "due again");

    // A retry with nothing to requeue leaves the batch finished: nothing would end
    // it again, and its delivered webhook is not sent twice.
    env.record
        .set_webhook_status(batch, "delivered (200)")
        .await
        .unwrap();
    assert!(env.record.retry_failed(batch, 1).await.unwrap().is_empty());
    assert!(env.record.batch_finished_at(batch).await.unwrap().is_some());
    assert_eq!(take_now().await.unwrap(), vec![]);
}

#[tokio::test]
async fn a_delivery_whose_worker_died_is_sent_by_another_postgres() {
    a_delivery_whose_worker_died_is_sent_by_another(Kind::PgRedis).await;
}

#[tokio::test]
async fn a_delivery_whose_worker_died_is_sent_by_another_sqlite() {
    a_delivery_whose_worker_died_is_sent_by_another(Kind::Sqlite).await;
}

/// `renderq run` stops its worker as soon as the batch is done: the delivery, retried
/// after the receiver's 500, must finish before the process exits.
#[tokio::test]
async fn renderq_run_exits_after_its_webhook_is_delivered() {
    let (port, seen) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let hook = format!("http://127.0.0.1:{port}/hook");
    let mut cmd = run_one_job(dir.path(), r#"{"prompt":"a","width":8,"height":8}"#);
    cmd.args(["--webhook", &hook]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let (code, text) = exit_and_text(out);
    assert_eq!(code, Some(0), "{text}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        2,
        "a 500, then delivered, before the exit: {seen:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&seen[1].1).unwrap();
    assert_eq!(v["succeeded"], 1);
}
