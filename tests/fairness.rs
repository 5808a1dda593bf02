//! Fairness between batches of one queue: a big catalogue submitted first does not
//! starve a small batch submitted after it. Runs on every backend.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use renderq::job::JobState;
use renderq::{job::BatchId, render::Renderers, store::DirStore, worker::WorkerConfig};

const BIG: usize = 1_000;
const SMALL: usize = 20;

fn lines(tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!(r#"{{"prompt":"{tag} {i}","model":"noop","width":8,"height":8}}"#))
        .collect()
}

async fn submit_batch(env: &Env, tag: &str, n: usize) -> BatchId {
    let lines = lines(tag, n);
    env.submit(&lines.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .batch
}

async fn succeeded(env: &Env, batch: BatchId) -> i64 {
    env.record.progress(batch).await.unwrap().unwrap().succeeded
}

/// A worker rendering `noop` jobs in `delay_ms` per device call, two jobs per call.
fn start_worker(
    env: &Env,
    store: &std::path::Path,
    concurrency: usize,
    delay_ms: u64,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<renderq::worker::WorkerReport>,
) {
    let cfg = WorkerConfig {
        concurrency,
        max_batch: 2,
        ..fast_config()
    };
    env.spawn_worker(
        cfg,
        Arc::new(DirStore::new(store)),
        Renderers::builtin(delay_ms),
    )
}

/// How many of the big batch's jobs had succeeded when the small one was done.
async fn big_done_when_small_done(
    env: &Env,
    big: BatchId,
    small: BatchId,
    deadline: tokio::time::Instant,
) -> i64 {
    loop {
        // Read the big batch first: its count can only be lower than at the moment the
        // small batch is seen done.
        let big_done = succeeded(env, big).await;
        if succeeded(env, small).await == SMALL as i64 {
            return big_done;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the small batch never finished"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The worker is busy with the big batch when the small one arrives; the small one
/// must be done while most of the big one still waits. In FIFO order it would finish
/// only after all `BIG` jobs.
async fn a_small_batch_is_not_starved_by_a_big_one_before_it(env: Env) {
    let big = submit_batch(&env, "big", BIG).await;
    let dir = tempfile::tempdir().unwrap();
    let (stop, handle) = start_worker(&env, dir.path(), 8, 20);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while succeeded(&env, big).await < 16 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the big batch never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let small = submit_batch(&env, "small", SMALL).await;
    let big_when_small_done = big_done_when_small_done(&env, big, small, deadline).await;
    assert!(
        big_when_small_done < (BIG / 2) as i64,
        "the small batch finished only when {big_when_small_done} of {BIG} big jobs were done"
    );
    // And nothing is lost: the big batch completes, every job once.
    let rows = env
        .wait_terminal(BIG + SMALL, Duration::from_secs(60))
        .await;
    if env.kind == Kind::PgRedis {
        // Finished batches' streams are deleted by the next read: Redis keeps no trace.
        while env.streams().await.len() > 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "batch streams left behind: {:?}",
                env.streams().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.cancel();
    handle.await.unwrap();
    assert!(
        rows.iter()
            .all(|r| r.state == JobState::Succeeded && r.attempt == 1),
        "every job succeeded at its first attempt"
    );
    env.assert_dispatch_empty().await;
}

/// Both batches are waiting before any worker starts: the one submitted second is
/// served from the first reads on, not after the first batch.
async fn waiting_batches_are_served_side_by_side(env: Env) {
    let big = submit_batch(&env, "big", BIG).await;
    let small = submit_batch(&env, "small", SMALL).await;
    let dir = tempfile::tempdir().unwrap();
    let (stop, handle) = start_worker(&env, dir.path(), 4, 5);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let big_when_small_done = big_done_when_small_done(&env, big, small, deadline).await;
    stop.cancel();
    handle.await.unwrap();
    assert!(
        big_when_small_done < (BIG / 4) as i64,
        "the small batch finished only when {big_when_small_done} of {BIG} big jobs were done"
    );
}

conformance!(
    a_small_batch_is_not_starved_by_a_big_one_before_it,
    waiting_batches_are_served_side_by_side,
);
