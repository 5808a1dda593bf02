//! Claims sized to the lanes: on a slow model two workers share a batch instead of
//! the first reader taking it all; on a fast one a worker grows to its cap.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use renderq::{job::JobState, render::Renderers, store::DirStore, worker::WorkerConfig};

fn noop_lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!(r#"{{"prompt":"p{i}","model":"noop","width":8,"height":8}}"#))
        .collect()
}

fn config(concurrency: usize, max_batch: usize) -> WorkerConfig {
    WorkerConfig {
        concurrency,
        max_batch,
        ..fast_config()
    }
}

/// 40 jobs, 700 ms per device call of 4, two workers with room for all 40 each:
/// both render a fair share.
async fn two_workers_share_a_slow_batch(kind: Kind) {
    let env = Env::with(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DirStore::new(dir.path()));
    let a = env.spawn_worker(config(256, 4), store.clone(), Renderers::builtin(700));
    let b = env.spawn_worker(config(256, 4), store, Renderers::builtin(700));
    // Both are waiting on the queue before the batch lands.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = noop_lines(40);
    env.submit(&lines.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let rows = env.wait_terminal(40, Duration::from_secs(60)).await;
    assert!(
        rows.iter().all(|r| r.state == JobState::Succeeded),
        "{rows:?}"
    );
    let mut done = Vec::new();
    for (stop, handle) in [a, b] {
        stop.cancel();
        done.push(handle.await.unwrap().jobs_done);
    }
    assert_eq!(done.iter().sum::<u64>(), 40, "{done:?}");
    // Each worker holds about what it renders in two seconds (12 jobs): neither
    // takes the whole batch while the other idles.
    assert!(
        done.iter().all(|&n| n >= 12),
        "jobs done per worker: {done:?}"
    );
}

#[tokio::test]
async fn two_workers_share_a_slow_batch_on_redis() {
    two_workers_share_a_slow_batch(Kind::PgRedis).await;
}

#[tokio::test]
async fn two_workers_share_a_slow_batch_on_postgres_dispatch() {
    two_workers_share_a_slow_batch(Kind::PgDb).await;
}

#[tokio::test]
async fn a_fast_model_grows_the_claims_to_the_cap() {
    let env = Env::with(Kind::PgRedis).await;
    let dir = tempfile::tempdir().unwrap();
    let worker = env.worker(
        config(300, 4),
        Arc::new(DirStore::new(dir.path())),
        Renderers::builtin(0),
    );
    let sizer = worker.sizer();
    assert_eq!(sizer.target(), 8, "two batches before any call");
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(worker.run(stop.clone()));
    let lines = noop_lines(400);
    env.submit(&lines.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    env.wait_terminal(400, Duration::from_secs(60)).await;
    stop.cancel();
    assert_eq!(handle.await.unwrap().jobs_done, 400);
    assert_eq!(
        sizer.target(),
        300,
        "noop calls take no time: the cap holds"
    );
    let lanes = sizer.lane_use();
    assert_eq!(lanes.len(), 1, "{lanes:?}");
    assert_eq!((lanes[0].label.as_str(), lanes[0].jobs), ("noop", 400));
}
