//! The batch webhook: a signed summary, retried until the receiver takes it.

mod common;

use std::{
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
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
