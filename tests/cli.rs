//! The `renderq` binary from outside: exit codes, messages, signals.

mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use renderq::job::JobState;
use renderq::render::Renderers;

fn renderq(env: &Env) -> Command {
    let mut c = env.renderq();
    c.env("RENDERQ_LOG", "renderq=debug");
    c
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn kill(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

async fn an_invalid_line_is_refused_with_its_line_and_field_and_nothing_is_queued(env: Env) {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "jobs.jsonl",
        "{\"prompt\":\"fine\"}\n{\"prompt\":\"also fine\"}\n{\"prompt\":\"too wide\",\"width\":100000}\n{\"prompt\":\"x\",\"steps\":500}\n",
    );
    let out = renderq(&env).arg("submit").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 3: field `width`"), "{stderr}");
    assert!(stderr.contains("4096"), "the limit is named: {stderr}");
    assert!(stderr.contains("line 4: field `steps`"), "{stderr}");
    assert!(stderr.contains("nothing was queued"), "{stderr}");
    assert!(
        env.record.recent_batches(10).await.unwrap().is_empty(),
        "no batch written"
    );
    assert!(env.rows().await.is_empty(), "no job written");
    env.assert_dispatch_empty().await;
}

async fn submit_status_cancel_and_wait_from_the_command_line(env: Env) {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "cat.jsonl",
        "{\"prompt\":\"a\",\"width\":16,\"height\":16}\n{\"prompt\":\"b\",\"width\":16,\"height\":16}\n",
    );
    let out = renderq(&env)
        .args(["submit", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["jobs"], 2);
    let batch = v["batch_id"].as_str().unwrap().to_string();
    let status = renderq(&env).args(["status", &batch]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("total 2  queued 2"), "{text}");
    assert!(text.contains("cat.jsonl"), "named after the file: {text}");
    let cancel = renderq(&env).args(["cancel", &batch]).output().unwrap();
    assert!(String::from_utf8_lossy(&cancel.stdout).contains("cancelled 2"));
    let wait = renderq(&env).args(["wait", &batch]).output().unwrap();
    assert_eq!(
        wait.status.code(),
        Some(1),
        "a cancelled batch waits to exit 1"
    );
    let missing = renderq(&env)
        .args(["wait", &uuid::Uuid::new_v4().to_string()])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

async fn sigterm_drains_in_flight_jobs_and_exits_zero(env: Env) {
    let lines: Vec<String> = (0..8)
        .map(|i| format!(r#"{{"prompt":"j{i}","model":"noop","width":16,"height":16}}"#))
        .collect();
    env.submit(&lines.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let store = tempfile::tempdir().unwrap();
    let mut child = renderq(&env)
        .args(["worker", "--concurrency", "2", "--max-batch", "1"])
        .env("RENDERQ_NOOP_DELAY_MS", "400")
        .env("RENDERQ_STORE", store.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..300 {
        if env
            .rows()
            .await
            .iter()
            .any(|r| r.state == JobState::Running)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill(child.id(), "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let rows = env.rows().await;
    assert!(
        rows.iter()
            .all(|r| r.state == JobState::Succeeded || r.state == JobState::Queued),
        "nothing left running: {rows:?}"
    );
    let succeeded = rows
        .iter()
        .filter(|r| r.state == JobState::Succeeded)
        .count();
    assert!(succeeded >= 1, "in-flight work finished: {rows:?}");
    assert_eq!(
        env.dispatch.backlog().await.unwrap(),
        8 - succeeded,
        "the rest wait, unclaimed"
    );
    if env.kind == Kind::PgRedis {
        assert_eq!(
            env.stream_counts().await,
            (8 - succeeded, 0),
            "nothing pending"
        );
    }
    // Another worker finishes the rest.
    let (stop, h) = env.spawn_worker(
        fast_config(),
        std::sync::Arc::new(renderq::store::DirStore::new(store.path())),
        Renderers::builtin(0),
    );
    let rows = env.wait_terminal(8, Duration::from_secs(20)).await;
    stop.cancel();
    h.await.unwrap();
    assert!(rows.iter().all(|r| r.state == JobState::Succeeded));
}

async fn past_the_shutdown_deadline_unfinished_jobs_are_released(env: Env) {
    env.submit(&[
        r#"{"prompt":"slow 1","model":"noop","width":16,"height":16}"#,
        r#"{"prompt":"slow 2","model":"noop","width":16,"height":16}"#,
    ])
    .await;
    let store = tempfile::tempdir().unwrap();
    let mut child = renderq(&env)
        .args(["worker", "--shutdown-secs", "0.3"])
        .env("RENDERQ_NOOP_DELAY_MS", "60000")
        .env("RENDERQ_STORE", store.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..300 {
        if env
            .rows()
            .await
            .iter()
            .all(|r| r.state == JobState::Running)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill(child.id(), "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    let rows = env.rows().await;
    assert!(
        rows.iter()
            .all(|r| r.state == JobState::Queued && r.attempt == 1),
        "released: {rows:?}"
    );
    assert_eq!(env.dispatch.backlog().await.unwrap(), 2, "dispatched anew");
    if env.kind == Kind::PgRedis {
        assert_eq!(env.stream_counts().await, (2, 0), "nothing pending");
    }
    let (stop, h) = env.spawn_worker(
        fast_config(),
        std::sync::Arc::new(renderq::store::DirStore::new(store.path())),
        Renderers::builtin(0),
    );
    let rows = env.wait_terminal(2, Duration::from_secs(20)).await;
    stop.cancel();
    h.await.unwrap();
    assert!(
        rows.iter()
            .all(|r| r.state == JobState::Succeeded && r.attempt == 2),
        "{rows:?}"
    );
}

#[test]
fn secrets_in_urls_are_never_printed_quick() {
    let out = Command::new(env!("CARGO_BIN_EXE_renderq"))
        .args(["status"])
        .env(
            "DATABASE_URL",
            "postgres://postgres:hunter2secret@127.0.0.1:1/nowhere",
        )
        .env("REDIS_URL", "redis://:redispw77@127.0.0.1:1")
        .env("AWS_SECRET_ACCESS_KEY", "awssecretkey99")
        .env("RENDERQ_LOG", "debug")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(
        all.contains("postgres://postgres:***@127.0.0.1:1/nowhere"),
        "{all}"
    );
    for secret in ["hunter2secret", "redispw77", "awssecretkey99"] {
        assert!(!all.contains(secret), "{secret} leaked: {all}");
    }
}

conformance!(
    an_invalid_line_is_refused_with_its_line_and_field_and_nothing_is_queued,
    submit_status_cancel_and_wait_from_the_command_line,
    sigterm_drains_in_flight_jobs_and_exits_zero,
    past_the_shutdown_deadline_unfinished_jobs_are_released,
);

#[tokio::test]
async fn bench_prints_its_figures_and_leaves_nothing_in_redis() {
    let env = Env::new().await;
    let store = tempfile::tempdir().unwrap();
    let out = renderq(&env)
        .args([
            "bench",
            "--jobs",
            "300",
            "--concurrency",
            "64",
            "--max-batch",
            "16",
        ])
        .env("RENDERQ_STORE", store.path())
        .output()
        .unwrap();
    let (code, text) = exit_and_text(out);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("submit: 300 jobs in"), "{text}");
    assert!(text.contains("drain: 300 jobs in"), "{text}");
    let queue = text
        .lines()
        .find_map(|l| l.strip_prefix("queue: "))
        .unwrap_or_else(|| panic!("no queue line: {text}"));
    assert!(queue.starts_with("bench-"), "{queue}");
    let mut redis = env.redis().await;
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("renderq:{{{queue}}}:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(left.is_empty(), "the bench's queue left {left:?}");
}

/// `RENDERQ_LOG_FORMAT=json`: every log line is one JSON object with its fields at the
/// top (worker, queue, job, batch), and no colour codes reach a pipe in either format.
#[test]
fn logs_are_json_lines_on_request_and_never_coloured_in_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let job = r#"{"prompt":"a","width":8,"height":8}"#;
    let out = run_one_job(dir.path(), job)
        .env("RENDERQ_LOG_FORMAT", "json")
        .env("RENDERQ_LOG", "renderq=info")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a pipe: {stderr}"
    );
    let logs: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let started = logs
        .iter()
        .find(|l| l["message"] == "worker started")
        .unwrap_or_else(|| panic!("no `worker started` line: {stderr}"));
    assert_eq!(started["level"], "INFO");
    assert!(
        started["worker"].is_string() && started["queue"].is_string(),
        "{started}"
    );
    assert!(
        logs.iter()
            .any(|l| l["message"] == "batch finished" && l["batch"].is_string()),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = run_one_job(dir.path(), job)
        .env("RENDERQ_LOG", "renderq=info")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("worker started"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a pipe: {stderr}"
    );
}
