//! The batch webhook: a signed summary, retried until the receiver takes it.

mod common;

use std::{
    collections::HashMap,
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

/// Two signing keys, as while keys rotate: every delivery carries a signature
/// under each.
const SECRETS: &str =
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_c2Vjb25kIHNlY3JldCBrZXkgYnl0ZXM=";

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    headers: HashMap<String, String>,
    body: String,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// How a receiver answers.
#[derive(Clone, Copy)]
enum Answer {
    /// 500 to the first request, 200 after.
    FailFirst,
    /// 302 to another address.
    Redirect(u16),
}

/// A receiver on 127.0.0.1; keeps the headers and body of each request.
async fn receiver_with(answer: Answer) -> (u16, Log) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Log = Arc::default();
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
            let headers = head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let first = {
                let mut seen = log.lock().unwrap();
                seen.push(Seen { headers, body });
                seen.len() == 1
            };
            let reply = match answer {
                Answer::FailFirst if first => "500 Internal Server Error\r\n".to_string(),
                Answer::FailFirst => "200 OK\r\n".to_string(),
                Answer::Redirect(to) => {
                    format!("302 Found\r\nLocation: http://127.0.0.1:{to}/hook\r\n")
                }
            };
            let _ = sock
                .write_all(
                    format!("HTTP/1.1 {reply}Content-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
        }
    });
    (port, seen)
}

async fn receiver() -> (u16, Log) {
    receiver_with(Answer::FailFirst).await
}

/// Verifies a delivery the way the Standard Webhooks specification says, written
/// here from the specification rather than with renderq's own signing: the HMAC-SHA256
/// of `id.timestamp.body` under each key, base64, one of the space-separated `v1,`
/// signatures; a timestamp within five minutes.
fn verify(secrets: &str, seen: &Seen) -> Result<(), String> {
    use base64::Engine;
    use hmac::Mac;
    let header = |name: &str| {
        seen.headers
            .get(name)
            .cloned()
            .ok_or(format!("no {name} header"))
    };
    let (id, timestamp, signatures) = (
        header("webhook-id")?,
        header("webhook-timestamp")?,
        header("webhook-signature")?,
    );
    let sent: i64 = timestamp.parse().map_err(|e| format!("timestamp: {e}"))?;
    if (chrono::Utc::now().timestamp() - sent).abs() > 300 {
        return Err(format!("timestamp {sent} is not within five minutes"));
    }
    let offered: Vec<&str> = signatures.split(' ').collect();
    for secret in secrets.split(' ') {
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.strip_prefix("whsec_").unwrap())
            .unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{timestamp}.{}", seen.body).as_bytes());
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        if !offered.contains(&format!("v1,{expected}").as_str()) {
            return Err(format!("no signature under {secret}: {signatures}"));
        }
    }
    Ok(())
}

fn settings(allow: &[&str]) -> renderq::webhook::WebhookSettings {
    renderq::webhook::WebhookSettings {
        secrets: renderq::webhook::parse_secrets(SECRETS).unwrap(),
        allow_hosts: allow.iter().map(|h| h.to_string()).collect(),
    }
}

#[tokio::test]
async fn a_finished_batch_posts_a_signed_summary_retried_after_a_500() {
    let env = Env::with(Kind::Sqlite).await;
    let (port, seen) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.jsonl");
    std::fs::write(&file, "{\"prompt\":\"a\",\"width\":8,\"height\":8}\n{\"prompt\":\"b\",\"width\":8,\"height\":8}\n").unwrap();
    let renderq = || {
        let mut c = env.renderq();
        c.env("RENDERQ_STORE", dir.path().join("out"))
            .env("RENDERQ_WEBHOOK_SECRET", SECRETS)
            .env("RENDERQ_WEBHOOK_ALLOW_HOSTS", "127.0.0.1");
        c
    };
    let bad = renderq()
        .args(["submit", "--webhook", "ftp://nope"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("http:// or https://"));
    // Without a secret there is nothing a receiver could check: refused, nothing queued.
    let unsigned = renderq()
        .env_remove("RENDERQ_WEBHOOK_SECRET")
        .args(["submit", "--webhook", "https://shop.example/hook"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(unsigned.status.code(), Some(1), "{unsigned:?}");
    assert!(String::from_utf8_lossy(&unsigned.stderr).contains("RENDERQ_WEBHOOK_SECRET"));
    assert!(env.record.recent_batches(10).await.unwrap().is_empty());
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
    assert_eq!(
        seen[0].headers["webhook-id"], seen[1].headers["webhook-id"],
        "one id for every try of a delivery"
    );
    for request in &seen {
        verify(SECRETS, request).unwrap();
        assert!(verify("whsec_b3RoZXIga2V5IGVudGlyZWx5IGRpZmZlcmVudA==", request).is_err());
        let v: serde_json::Value = serde_json::from_str(&request.body).unwrap();
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
async fn wait_seen(seen: &Mutex<Vec<Seen>>, n: usize, within: Duration) {
    let end = tokio::time::Instant::now() + within;
    while seen.lock().unwrap().len() < n && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn hook_config() -> renderq::worker::WorkerConfig {
    renderq::worker::WorkerConfig {
        webhook_backoff: Duration::from_millis(20),
        webhooks: settings(&["127.0.0.1"]),
        ..fast_config()
    }
}

#[tokio::test]
async fn cancelling_a_batchs_last_job_by_its_id_finishes_the_batch_and_sends_its_webhook() {
    let env = Env::new().await;
    let (port, seen) = receiver().await;
    let (batch, ids) = submit_with_hook(&env, port, 2).await;
    let renderq = |args: &[&str]| {
        let out = env.renderq().args(args).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let cancel = |id: &str| renderq(&["cancel", id]);
    // Shown with scheme and host only: a receiver's path may hold its secret.
    let hook_line = format!("webhook http://127.0.0.1:{port}/…: ");
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
    let v: serde_json::Value = serde_json::from_str(&seen[1].body).unwrap();
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
    let claimed = env.record.claim(&[request], "test").await.unwrap().jobs;
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
    let bodies: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.body.clone())
        .collect();
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
    cmd.args(["--webhook", &hook])
        .env("RENDERQ_WEBHOOK_SECRET", SECRETS)
        .env("RENDERQ_WEBHOOK_ALLOW_HOSTS", "127.0.0.1");
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
    let v: serde_json::Value = serde_json::from_str(&seen[1].body).unwrap();
    assert_eq!(v["succeeded"], 1);
    verify(SECRETS, &seen[1]).unwrap();
}

/// Submits one job with a webhook to `url` and works it with `webhooks`; returns
/// the delivery's recorded outcome.
async fn outcome_of_a_webhook_to(url: &str, webhooks: renderq::webhook::WebhookSettings) -> String {
    let env = Env::with(Kind::Sqlite).await;
    let jobs = env.jobs(&[r#"{"prompt":"p","width":8,"height":8}"#]);
    let done = renderq::submit::submit_with_webhook(
        env.record.as_ref(),
        env.dispatch.as_ref(),
        "hooked",
        &jobs,
        1,
        Some(url),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = renderq::worker::WorkerConfig {
        webhooks,
        ..hook_config()
    };
    let (stop, h) = env.spawn_worker(
        cfg,
        Arc::new(renderq::store::DirStore::new(dir.path())),
        renderq::render::Renderers::builtin(0),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let hook = env.record.webhook(done.batch).await.unwrap().unwrap();
        if let Some(status) = hook.status {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no outcome recorded"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    stop.cancel();
    h.await.unwrap();
    status
}

/// Whoever can submit names the webhook's URL: a worker must not be made to POST to
/// its own host, the network behind it, or the cloud's metadata service.
#[tokio::test]
async fn webhooks_to_loopback_or_link_local_addresses_are_refused() {
    let (port, seen) = receiver().await;
    let status =
        outcome_of_a_webhook_to(&format!("http://127.0.0.1:{port}/hook"), settings(&[])).await;
    assert!(
        status
            .starts_with("refused: 127.0.0.1 resolves to 127.0.0.1, which is not a public address"),
        "{status}"
    );
    let status = outcome_of_a_webhook_to(
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        settings(&[]),
    )
    .await;
    assert!(
        status.contains("169.254.169.254, which is not a public address"),
        "{status}"
    );
    let status =
        outcome_of_a_webhook_to(&format!("http://localhost:{port}/hook"), settings(&[])).await;
    assert!(status.contains("not a public address"), "{status}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the receiver"
    );
    // Listed as an internal receiver, the same host is reached.
    let status = outcome_of_a_webhook_to(
        &format!("http://127.0.0.1:{port}/hook"),
        settings(&["127.0.0.1"]),
    )
    .await;
    assert_eq!(status, "delivered (200)");
}

/// A redirect would lead past the address check: it is not followed.
#[tokio::test]
async fn redirects_are_not_followed() {
    let (inner, reached) = receiver().await;
    let (outer, asked) = receiver_with(Answer::Redirect(inner)).await;
    let status = outcome_of_a_webhook_to(
        &format!("http://127.0.0.1:{outer}/hook"),
        settings(&["127.0.0.1"]),
    )
    .await;
    assert_eq!(status, "refused with 302 (redirects are not followed)");
    assert_eq!(asked.lock().unwrap().len(), 1, "asked once, not retried");
    assert!(
        reached.lock().unwrap().is_empty(),
        "the redirect was not followed"
    );
}

/// A worker without a secret sends nothing unsigned.
#[tokio::test]
async fn a_worker_without_a_secret_sends_nothing() {
    let (port, seen) = receiver().await;
    let status = outcome_of_a_webhook_to(
        &format!("http://127.0.0.1:{port}/hook"),
        renderq::webhook::WebhookSettings {
            secrets: Vec::new(),
            allow_hosts: vec!["127.0.0.1".into()],
        },
    )
    .await;
    assert!(
        status.contains("RENDERQ_WEBHOOK_SECRET is not set"),
        "{status}"
    );
    assert!(seen.lock().unwrap().is_empty());
}
