//! The reconciler: Postgres is the record; whatever Redis loses is dispatched again.

mod common;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use common::*;
use image::RgbImage;
use renderq::job::JobState;
use renderq::{
    render::{NoopRenderer, RenderError, RenderRequest, Renderer, Renderers},
    store::DirStore,
};

fn with(model: &str, r: Arc<dyn Renderer>) -> Renderers {
    let mut rs = Renderers::builtin(0);
    rs.insert(model, r);
    rs
}

fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[tokio::test]
async fn redis_losing_everything_mid_batch_loses_no_job() {
    let env = Env::new().await;
    let lines: Vec<String> = (0..30)
        .map(|i| format!(r#"{{"prompt":"p{i}","model":"remote/slow","width":8,"height":8}}"#))
        .collect();
    env.submit(&lines.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = renderq::worker::WorkerConfig {
        concurrency: 4,
        max_batch: 2,
        ..fast_config()
    };
    let (stop, h) = env.spawn_worker(
        cfg,
        Arc::new(DirStore::new(dir.path())),
        with("remote/slow", Arc::new(NoopRenderer::new(100))),
    );
    for _ in 0..500 {
        let rows = env.rows().await;
        if rows
            .iter()
            .filter(|r| r.state == JobState::Succeeded)
            .count()
            >= 4
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    env.forget_queue_keys().await; // what FLUSHALL does to this queue
    let rows = env.wait_terminal(30, Duration::from_secs(60)).await;
    stop.cancel();
    h.await.unwrap();
    assert!(
        rows.iter().all(|r| r.state == JobState::Succeeded),
        "{rows:?}"
    );
    assert_eq!(count_files(dir.path()), 30, "one object per job");
    env.assert_dispatch_empty().await;
}

#[tokio::test]
async fn a_job_committed_but_never_dispatched_is_dispatched() {
    let env = Env::new().await;
    // A producer that crashed between its commit and its XADD.
    let jobs = env.jobs(&[r#"{"prompt":"orphan","width":8,"height":8}"#]);
    env.record
        .create_batch("crashed", &env.queue, &jobs, 3)
        .await
        .unwrap();
    assert_eq!(env.dispatch.backlog().await.unwrap(), 0);
    let dir = tempfile::tempdir().unwrap();
    let (stop, h) = env.spawn_worker(
        fast_config(),
        Arc::new(DirStore::new(dir.path())),
        Renderers::builtin(0),
    );
    let rows = env.wait_terminal(1, Duration::from_secs(20)).await;
    stop.cancel();
    h.await.unwrap();
    assert_eq!((rows[0].state.as_str(), rows[0].attempt), ("succeeded", 1));
}

/// Never returns.
struct Hang;
#[async_trait]
impl Renderer for Hang {
    async fn render(&self, _: &[RenderRequest]) -> Vec<Result<RgbImage, RenderError>> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn running_jobs_of_a_dead_worker_are_rescued_when_redis_lost_their_entries() {
    let env = Env::new().await;
    env.submit(&[r#"{"prompt":"held","model":"remote/slow","width":8,"height":8}"#])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DirStore::new(dir.path()));
    let a = env.worker(
        fast_config(),
        store.clone(),
        with("remote/slow", Arc::new(Hang)),
    );
    let a = tokio::spawn(a.run(tokio_util::sync::CancellationToken::new()));
    for _ in 0..300 {
        if env
            .rows()
            .await
            .iter()
            .all(|r| r.state == JobState::Running)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.abort(); // dies holding the job
    let _ = a.await;
    env.forget_queue_keys().await; // and Redis forgets the entry: no XAUTOCLAIM possible
    let (stop, h) = env.spawn_worker(
        fast_config(),
        store,
        with("remote/slow", Arc::new(NoopRenderer::new(0))),
    );
    let rows = env.wait_terminal(1, Duration::from_secs(30)).await;
    stop.cancel();
    h.await.unwrap();
    assert_eq!(
        (rows[0].state.as_str(), rows[0].attempt),
        ("succeeded", 2),
        "{rows:?}"
    );
}

/// Fails each job's first render with a retryable error.
#[derive(Default)]
struct FailOnce(Mutex<HashSet<String>>);
#[async_trait]
impl Renderer for FailOnce {
    async fn render(&self, batch: &[RenderRequest]) -> Vec<Result<RgbImage, RenderError>> {
        batch
            .iter()
            .map(|r| {
                if self.0.lock().unwrap().insert(r.prompt.clone()) {
                    Err(RenderError::Retry("first try fails".into()))
                } else {
                    Ok(RgbImage::new(r.width, r.height))
                }
            })
            .collect()
    }
}

#[tokio::test]
async fn a_retry_lost_from_the_delayed_set_is_scheduled_again() {
    let env = Env::new().await;
    env.submit(&[r#"{"prompt":"again","model":"remote/flaky","width":8,"height":8}"#])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = renderq::worker::WorkerConfig {
        backoff_base: Duration::from_secs(3),
        backoff_max: Duration::from_secs(3),
        ..fast_config()
    };
    let (stop, h) = env.spawn_worker(
        cfg,
        Arc::new(DirStore::new(dir.path())),
        with("remote/flaky", Arc::new(FailOnce::default())),
    );
    for _ in 0..500 {
        if env
            .rows()
            .await
            .iter()
            .all(|r| r.state == JobState::Retrying)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(env.rows().await[0].state, JobState::Retrying);
    env.forget_queue_keys().await;
    let rows = env.wait_terminal(1, Duration::from_secs(30)).await;
    stop.cancel();
    h.await.unwrap();
    assert_eq!(
        (rows[0].state.as_str(), rows[0].attempt),
        ("succeeded", 2),
        "{rows:?}"
    );
}

#[tokio::test]
async fn one_reconciler_leads_at_a_time() {
    let env = Env::new().await;
    let first = env.record.lead("test-lead").await.unwrap();
    assert!(first.is_some());
    assert!(
        env.record.lead("test-lead").await.unwrap().is_none(),
        "a second leader"
    );
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        again = env.record.lead("test-lead").await.unwrap();
        if again.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the lead is free once its holder is gone");
}
