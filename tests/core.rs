//! The core service's promises, on real Postgres, Redis and S3 (s3s-fs).

mod common;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use common::*;
use image::RgbImage;
use renderq::{
    db::{ClaimRequest, Outcome, Recorded},
    job::{JobId, JobState},
    render::{RenderError, RenderRequest, Renderer, Renderers},
    store::DirStore,
    store::Store,
};

/// Never returns: a device that hangs, or a worker about to die holding its jobs.
struct Hang;
#[async_trait]
impl Renderer for Hang {
    async fn render(&self, _: &[RenderRequest]) -> Vec<Result<RgbImage, RenderError>> {
        std::future::pending().await
    }
}

/// Fails every time with the given error.
struct Failing(RenderError);
#[async_trait]
impl Renderer for Failing {
    async fn render(&self, batch: &[RenderRequest]) -> Vec<Result<RgbImage, RenderError>> {
        batch.iter().map(|_| Err(self.0.clone())).collect()
    }
}

/// Records the batch key of each job of each device call. Calls wait for the gate, so
/// a test can let every job be claimed before the first call returns.
struct Recorder {
    calls: std::sync::Mutex<Vec<Vec<renderq::render::BatchKey>>>,
    gate: tokio::sync::Semaphore,
}
#[async_trait]
impl Renderer for Recorder {
    async fn render(&self, batch: &[RenderRequest]) -> Vec<Result<RgbImage, RenderError>> {
        let _permit = self.gate.acquire().await.unwrap();
        let keys = batch.iter().map(RenderRequest::batch_key).collect();
        self.calls.lock().unwrap().push(keys);
        batch
            .iter()
            .map(|r| Ok(RgbImage::new(r.width, r.height)))
            .collect()
    }
}

fn with(model: &str, r: Arc<dyn Renderer>) -> Renderers {
    let mut rs = Renderers::builtin(0);
    rs.insert(model, r);
    rs
}

fn dir_store() -> (tempfile::TempDir, Arc<DirStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DirStore::new(dir.path()));
    (dir, store)
}

async fn submitted_jobs_are_rendered_stored_and_recorded(env: Env) {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(DirStore::new(dir.path()));
    let stored = end_to_end(&env, local.clone()).await;
    for key in &stored {
        let bytes = std::fs::read(local.path(key)).unwrap();
        assert!(image::load_from_memory(&bytes).is_ok(), "{key} is an image");
    }
    assert_eq!(
        walk(dir.path()).len(),
        3,
        "one file per job, no temporary files left"
    );
    let env = Env::with(env.kind).await;
    let store = s3_store().await;
    let done = env
        .submit(&[
            r#"{"prompt":"a red chair","width":64,"height":48}"#,
            r#"{"prompt":"a blue lamp","width":64,"height":64,"format":"jpeg","seed":42}"#,
            r#"{"prompt":"a green sofa","width":32,"height":32,"format":"webp"}"#,
        ])
        .await;
    let (stop, handle) = env.spawn_worker(fast_config(), store.clone(), Renderers::builtin(0));
    let rows = env.wait_terminal(3, Duration::from_secs(30)).await;
    stop.cancel();
    handle.await.unwrap();
    assert!(
        rows.iter()
            .all(|r| r.state == JobState::Succeeded && r.attempt == 1),
        "{rows:?}"
    );
    let keys = s3_keys(&store).await;
    assert_eq!(keys.len(), 3, "{keys:?}");
    for row in &rows {
        let key = row.output_key.as_deref().unwrap();
        assert!(
            key.starts_with(&format!("out/{}/{}.", done.batch, row.id)),
            "{key}"
        );
        assert!(keys.contains(&key.to_string()));
    }
    let jpeg = rows
        .iter()
        .find_map(|r| r.output_key.clone().filter(|k| k.ends_with(".jpg")))
        .unwrap();
    let head = store
        .client()
        .head_object()
        .bucket(store.bucket())
        .key(&jpeg)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("image/jpeg"));
    let meta = head.metadata().unwrap();
    assert_eq!(meta.get("seed").map(String::as_str), Some("42"));
    assert_eq!(meta.get("model").map(String::as_str), Some("placeholder"));
    let body = store
        .client()
        .get_object()
        .bucket(store.bucket())
        .key(&jpeg)
        .send()
        .await
        .unwrap();
    let bytes = body.body.collect().await.unwrap().into_bytes();
    let img = image::load_from_memory(&bytes).unwrap();
    assert_eq!((img.width(), img.height()), (64, 64));
    // Redis holds only work in flight: finished entries are acknowledged and deleted.
    env.assert_dispatch_empty().await;
    let p = env.record.progress(done.batch).await.unwrap().unwrap();
    assert_eq!((p.total, p.succeeded, p.done), (3, 3, true));
}

async fn a_dead_workers_jobs_complete_once_after_the_lease(env: Env) {
    let store = s3_store().await;
    env.submit(&[
        r#"{"prompt":"one","model":"remote/slow","width":16,"height":16}"#,
        r#"{"prompt":"two","model":"remote/slow","width":16,"height":16}"#,
        r#"{"prompt":"three","model":"remote/slow","width":16,"height":16}"#,
    ])
    .await;
    // Worker A claims everything, then dies mid-render (its future is dropped).
    let a = env.worker(
        fast_config(),
        store.clone(),
        with("remote/slow", Arc::new(Hang)),
    );
    let a = tokio::spawn(a.run(tokio_util::sync::CancellationToken::new()));
    for _ in 0..200 {
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
    assert!(
        env.rows()
            .await
            .iter()
            .all(|r| r.state == JobState::Running)
    );
    a.abort();
    let _ = a.await;
    let died = std::time::Instant::now();
    // Worker B serves the same model quickly and takes the jobs over after the lease.
    let (stop, b) = env.spawn_worker(
        fast_config(),
        store.clone(),
        with(
            "remote/slow",
            Arc::new(renderq::render::NoopRenderer::new(0)),
        ),
    );
    let rows = env.wait_terminal(3, Duration::from_secs(30)).await;
    let took = died.elapsed();
    stop.cancel();
    b.await.unwrap();
    assert!(
        rows.iter()
            .all(|r| r.state == JobState::Succeeded && r.attempt == 2),
        "{rows:?}"
    );
    assert!(
        took >= Duration::from_millis(1000),
        "taken over before the lease: {took:?}"
    );
    assert_eq!(s3_keys(&store).await.len(), 3, "one object per job");
    env.assert_dispatch_empty().await;
}

async fn a_stale_attempts_late_completion_changes_nothing(env: Env) {
    let done = env.submit(&[r#"{"prompt":"x"}"#]).await;
    let id = env.rows().await[0].id.0;
    let id = JobId(id);
    let first = env
        .record
        .claim(
            &[ClaimRequest {
                id,
                takeover: false,
            }],
            "a",
        )
        .await
        .unwrap()
        .jobs;
    assert_eq!(first[0].attempt, 1);
    // A second claim without takeover finds it running and claims nothing.
    assert!(
        env.record
            .claim(
                &[ClaimRequest {
                    id,
                    takeover: false
                }],
                "b"
            )
            .await
            .unwrap()
            .jobs
            .is_empty()
    );
    let second = env
        .record
        .claim(&[ClaimRequest { id, takeover: true }], "b")
        .await
        .unwrap()
        .jobs;
    assert_eq!(second[0].attempt, 2);
    let stored = Outcome::Stored { key: "k".into() };
    let late = env
        .record
        .record_outcomes(&[(id, 1, stored.clone())])
        .await
        .unwrap();
    assert_eq!(late, vec![Recorded::Stale]);
    let failed = Outcome::Failed {
        error: "late".into(),
        retry: false,
        backoff_ms: 0,
    };
    assert_eq!(
        env.record
            .record_outcomes(&[(id, 1, failed)])
            .await
            .unwrap(),
        vec![Recorded::Stale]
    );
    let rows = env.rows().await;
    assert_eq!(
        (
            rows[0].state.as_str(),
            rows[0].attempt,
            rows[0].output_key.clone()
        ),
        ("running", 2, None)
    );
    let ok = env
        .record
        .record_outcomes(&[(id, 2, stored)])
        .await
        .unwrap();
    assert_eq!(ok, vec![Recorded::Moved(JobState::Succeeded, None)]);
    assert_eq!(
        env.record
            .progress(done.batch)
            .await
            .unwrap()
            .unwrap()
            .succeeded,
        1
    );
}

async fn a_duplicate_id_makes_one_job(env: Env) {
    let id = uuid::Uuid::new_v4();
    let line = format!(r#"{{"prompt":"same","id":"{id}","width":16,"height":16}}"#);
    let first = env.submit(&[&line]).await;
    let second = env.submit(&[&line]).await;
    assert_eq!((first.jobs, first.duplicates), (1, 0));
    assert_eq!((second.jobs, second.duplicates), (0, 1));
    assert_eq!(env.dispatch.backlog().await.unwrap(), 1, "dispatched once");
    let (_dir, store) = dir_store();
    let (stop, h) = env.spawn_worker(fast_config(), store, Renderers::builtin(0));
    let rows = env.wait_terminal(1, Duration::from_secs(20)).await;
    stop.cancel();
    h.await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id.0, id);
}

#[tokio::test]
async fn raw_xadd_jobs_complete_and_bad_messages_fail_without_blocking() {
    let env = Env::new().await;
    let mut con = env.redis().await;
    let chosen = uuid::Uuid::new_v4();
    let xadd = |field: &str, value: String| {
        let mut c = redis::cmd("XADD");
        c.arg(env.stream()).arg("*").arg(field).arg(value);
        c
    };
    let _: String = xadd(
        "job",
        r#"{"prompt":"raw one","width":16,"height":16}"#.into(),
    )
    .query_async(&mut con)
    .await
    .unwrap();
    let _: String = xadd(
        "job",
        format!(r#"{{"prompt":"raw two","id":"{chosen}","width":16,"height":16}}"#),
    )
    .query_async(&mut con)
    .await
    .unwrap();
    let _: String = xadd("job", "this is not json".into())
        .query_async(&mut con)
        .await
        .unwrap();
    let _: String = xadd("job", r#"{"prompt":"x","width":-3}"#.into())
        .query_async(&mut con)
        .await
        .unwrap();
    let _: String = xadd("colour", "red".into())
        .query_async(&mut con)
        .await
        .unwrap();
    let (_dir, store) = dir_store();
    let (stop, h) = env.spawn_worker(fast_config(), store.clone(), Renderers::builtin(0));
    let rows = env.wait_terminal(5, Duration::from_secs(20)).await;
    stop.cancel();
    h.await.unwrap();
    let ok: Vec<_> = rows
        .iter()
        .filter(|r| r.state == JobState::Succeeded)
        .collect();
    let bad: Vec<_> = rows
        .iter()
        .filter(|r| r.state == JobState::Failed)
        .collect();
    assert_eq!((ok.len(), bad.len()), (2, 3), "{rows:?}");
    assert!(
        ok.iter().any(|r| r.id.0 == chosen),
        "the producer's id is kept"
    );
    for r in &ok {
        let key = r.output_key.as_deref().unwrap();
        assert!(key.starts_with("adhoc/"), "{key}");
        assert!(store.path(key).exists());
    }
    for r in &bad {
        let err = r.error.as_deref().unwrap();
        assert!(err.contains("invalid job message"), "{err}");
    }
    assert!(
        bad.iter()
            .any(|r| r.error.as_deref().unwrap().contains("width"))
    );
    assert!(
        bad.iter()
            .any(|r| r.error.as_deref().unwrap().contains("no `job` field"))
    );
    // Every message was acknowledged and deleted: nothing blocks the stream.
    env.assert_dispatch_empty().await;
}

async fn a_failing_renderer_retries_with_backoff_then_fails_with_its_error(env: Env) {
    env.submit(&[
        r#"{"prompt":"flaky","model":"remote/flaky","width":16,"height":16}"#,
        r#"{"prompt":"bad","model":"remote/broken","width":16,"height":16}"#,
        r#"{"prompt":"lost","model":"remote/nonexistent","width":16,"height":16}"#,
    ])
    .await;
    let mut rs = with(
        "remote/flaky",
        Arc::new(Failing(RenderError::Retry("device on fire".into()))),
    );
    rs.insert(
        "remote/broken",
        Arc::new(Failing(RenderError::Abort("weights missing".into()))),
    );
    let (_dir, store) = dir_store();
    let (stop, h) = env.spawn_worker(fast_config(), store, rs);
    let rows = env.wait_terminal(3, Duration::from_secs(20)).await;
    stop.cancel();
    h.await.unwrap();
    let get = |err: &str| {
        rows.iter()
            .find(|r| r.error.as_deref().unwrap_or("").contains(err))
            .cloned()
            .unwrap()
    };
    let flaky = get("device on fire");
    assert_eq!(
        (flaky.state.as_str(), flaky.attempt),
        ("failed", 3),
        "retried up to max_attempts"
    );
    let broken = get("weights missing");
    assert_eq!(
        (broken.state.as_str(), broken.attempt),
        ("failed", 1),
        "Abort fails at once"
    );
    let lost = get("not served by this worker");
    assert_eq!((lost.state.as_str(), lost.attempt), ("failed", 1));
    env.assert_dispatch_empty().await;
    // Only Redis dispatch has a delayed set; the database ones keep retries in rows.
    if env.kind == Kind::PgRedis {
        let mut con = env.redis().await;
        let delayed: usize = redis::cmd("ZCARD")
            .arg(format!("renderq:{{{}}}:delayed", env.queue))
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(delayed, 0);
    }
}

/// A lease longer than the panics below take, even with their backtraces printed on
/// a loaded machine: a lease that lapsed would hand the jobs over and bump their
/// attempt, which is not what this test is about. Database dispatch holds its claims
/// for the environment's lease (a retry waits it out there), so the environment and
/// the worker both get it, and it stays short enough for three attempts.
const PANIC_TEST_LEASE: Duration = Duration::from_secs(5);

conformance!(lease = PANIC_TEST_LEASE; a_renderer_panic_fails_only_its_job);

/// The built-in renderers themselves (not a test renderer): a panic inside their
/// device call fails only the job that causes it; the jobs batched with it render.
async fn a_renderer_panic_fails_only_its_job(env: Env) {
    let mut lines = Vec::new();
    for model in ["placeholder", "noop"] {
        for p in ["a", "POISON", "b", "c"] {
            lines.push(format!(
                r#"{{"prompt":"{p} {model}","model":"{model}","width":16,"height":16}}"#
            ));
        }
    }
    env.submit(&lines.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let (_dir, store) = dir_store();
    let poison = renderq::render::PanicOn::new(Some("POISON".into()));
    let (stop, h) = env.spawn_worker(env.config(), store, Renderers::builtin_panicking(0, poison));
    env.wait_terminal(8, Duration::from_secs(60)).await;
    stop.cancel();
    h.await.unwrap();
    let rows = env.record.jobs_of_queue(&env.queue).await.unwrap();
    for r in &rows {
        if r.prompt.contains("POISON") {
            assert_eq!((r.state, r.attempt), (JobState::Failed, 3), "{rows:?}");
            let error = r.error.as_deref().unwrap();
            assert!(
                error.contains("renderer panicked: poison prompt"),
                "{error}"
            );
        } else {
            assert_eq!((r.state, r.attempt), (JobState::Succeeded, 1), "{rows:?}");
        }
    }
}

async fn cancel_stops_queued_jobs_and_discards_running_ones(env: Env) {
    let queued = env
        .submit(&[
            r#"{"prompt":"q1","width":16,"height":16}"#,
            r#"{"prompt":"q2","width":16,"height":16}"#,
        ])
        .await;
    assert_eq!(env.record.cancel(queued.batch.0).await.unwrap().jobs, 2);
    let running = env
        .submit(&[r#"{"prompt":"r","model":"remote/slow","width":16,"height":16}"#])
        .await;
    let (dir, store) = dir_store();
    let (stop, h) = env.spawn_worker(
        fast_config(),
        store,
        with(
            "remote/slow",
            Arc::new(renderq::render::NoopRenderer::new(1500)),
        ),
    );
    for _ in 0..200 {
        let p = env.record.progress(running.batch).await.unwrap().unwrap();
        if p.running == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(env.record.cancel(running.batch.0).await.unwrap().jobs, 1);
    // The render finishes; its result must be discarded and its message forgotten.
    for _ in 0..200 {
        if env.dispatch.backlog().await.unwrap() == 0
            && env
                .rows()
                .await
                .iter()
                .all(|r| r.state == JobState::Cancelled)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.cancel();
    h.await.unwrap();
    let rows = env.rows().await;
    assert!(
        rows.iter()
            .all(|r| r.state == JobState::Cancelled && r.output_key.is_none()),
        "{rows:?}"
    );
    assert!(
        rows.iter().filter(|r| r.attempt == 0).count() == 2,
        "queued jobs never started: {rows:?}"
    );
    env.assert_dispatch_empty().await;
    let files = walk(dir.path());
    assert!(files.is_empty() || files.len() <= 1, "{files:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test]
async fn every_state_change_is_notified() {
    let env = Env::new().await;
    let mut listener = sqlx::postgres::PgListener::connect(&env.db_url)
        .await
        .unwrap();
    listener.listen("renderq_events").await.unwrap();
    let done = env
        .submit(&[r#"{"prompt":"n","width":16,"height":16}"#])
        .await;
    let (_dir, store) = dir_store();
    let (stop, h) = env.spawn_worker(fast_config(), store, Renderers::builtin(0));
    let mut states = Vec::new();
    while states.last().map(String::as_str) != Some("succeeded") {
        let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(n.payload()).unwrap();
        assert_eq!(v["batch_id"], done.batch.to_string());
        assert!(v["job_id"].is_string());
        states.push(v["state"].as_str().unwrap().to_string());
    }
    stop.cancel();
    h.await.unwrap();
    assert_eq!(states, ["queued", "running", "succeeded"]);
}

#[tokio::test]
async fn redis_losing_everything_does_not_stop_the_worker() {
    // The group and stream vanish (FLUSHALL on a shared server would hit other tests,
    // so the queue's own keys are deleted); new work must still flow.
    let env = Env::new().await;
    let (_dir, store) = dir_store();
    let (stop, h) = env.spawn_worker(fast_config(), store, Renderers::builtin(0));
    env.submit(&[r#"{"prompt":"before","width":16,"height":16}"#])
        .await;
    env.wait_terminal(1, Duration::from_secs(20)).await;
    let mut con = env.redis().await;
    let _: () = redis::cmd("DEL")
        .arg(env.stream())
        .query_async(&mut con)
        .await
        .unwrap();
    // The worker notices (its next takeover scan finds no group) and makes the
    // stream and its group again before anything new is submitted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let groups: Result<redis::Value, _> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(env.stream())
            .query_async(&mut con)
            .await;
        if matches!(groups, Ok(redis::Value::Array(g)) if !g.is_empty()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not make the stream's group again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.submit(&[r#"{"prompt":"after","width":16,"height":16}"#])
        .await;
    let rows = env.wait_terminal(2, Duration::from_secs(20)).await;
    stop.cancel();
    h.await.unwrap();
    assert!(
        rows.iter().all(|r| r.state == JobState::Succeeded),
        "{rows:?}"
    );
    assert_eq!(env.dispatch.backlog().await.unwrap(), 0);
}

/// Submits three jobs of different formats, works them, checks the record; returns keys.
async fn end_to_end(env: &Env, store: Arc<dyn Store>) -> Vec<String> {
    let done = env
        .submit(&[
            r#"{"prompt":"one","width":32,"height":32}"#,
            r#"{"prompt":"two","width":32,"height":16,"format":"jpeg"}"#,
            r#"{"prompt":"three","width":16,"height":16,"format":"webp"}"#,
        ])
        .await;
    let (stop, h) = env.spawn_worker(fast_config(), store, Renderers::builtin(0));
    let rows = env.wait_terminal(3, Duration::from_secs(30)).await;
    stop.cancel();
    h.await.unwrap();
    assert!(
        rows.iter()
            .all(|r| r.state == JobState::Succeeded && r.attempt == 1),
        "{rows:?}"
    );
    env.assert_dispatch_empty().await;
    let p = env.record.progress(done.batch).await.unwrap().unwrap();
    assert_eq!((p.total, p.succeeded, p.done), (3, 3, true));
    rows.into_iter().map(|r| r.output_key.unwrap()).collect()
}

/// The worker renders together only jobs that share (model, width, height, steps,
/// guidance), at most `max_batch` (4 here) per call, and each job once.
async fn claimed_jobs_render_together_only_when_they_share_a_shape(env: Env) {
    let shapes = [
        (4, r#""width":64,"height":64,"steps":2"#),
        (3, r#""width":64,"height":64,"steps":3"#),
        (2, r#""width":64,"height":64,"steps":2,"guidance":5"#),
        (5, r#""width":32,"height":64,"steps":2"#),
        (
            6,
            r#""width":64,"height":64,"steps":2,"scheduler":"euler_a""#,
        ),
        (
            1,
            r#""width":64,"height":64,"steps":2,"model":"remote/other""#,
        ),
    ];
    let lines: Vec<String> = shapes
        .iter()
        .flat_map(|(n, shape)| {
            (0..*n).map(move |i| {
                let model = if shape.contains("model") {
                    ""
                } else {
                    r#","model":"remote/rec""#
                };
                format!(r#"{{"prompt":"p{i}",{shape}{model}}}"#)
            })
        })
        .collect();
    env.submit(&lines.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let recorder = Arc::new(Recorder {
        calls: Default::default(),
        gate: tokio::sync::Semaphore::new(0),
    });
    let mut renderers = with("remote/rec", recorder.clone());
    renderers.insert("remote/other", recorder.clone());
    let (_dir, store) = dir_store();
    let (stop, h) = env.spawn_worker(fast_config(), store, renderers);
    // Open the gate once more than a call's worth of jobs is claimed, so jobs of
    // several shapes wait in the render stage together (the worker claims the rest as
    // calls finish).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rows = env.rows().await;
        if rows.iter().filter(|r| r.state != JobState::Queued).count() >= 6 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "jobs never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    recorder.gate.add_permits(1);
    let rows = env.wait_terminal(21, Duration::from_secs(20)).await;
    stop.cancel();
    h.await.unwrap();
    assert!(
        rows.iter().all(|r| r.state == JobState::Succeeded),
        "{rows:?}"
    );
    let calls = recorder.calls.lock().unwrap().clone();
    for call in &calls {
        assert!(call.len() <= 4, "over max_batch: {call:?}");
        assert!(call.iter().all(|k| *k == call[0]), "mixed shapes: {call:?}");
    }
    // Each job rendered once: per shape, the calls' jobs add up to its count.
    let mut per_key = std::collections::BTreeMap::new();
    for key in calls.iter().flatten() {
        *per_key.entry(key.clone()).or_insert(0) += 1;
    }
    let mut counts: Vec<usize> = per_key.into_values().collect();
    counts.sort();
    assert_eq!(counts, vec![1, 2, 3, 4, 5, 6]);
    assert!(
        calls.iter().any(|c| c.len() > 1),
        "nothing was batched: {calls:?}"
    );
}

conformance!(
    submitted_jobs_are_rendered_stored_and_recorded,
    a_dead_workers_jobs_complete_once_after_the_lease,
    a_stale_attempts_late_completion_changes_nothing,
    a_duplicate_id_makes_one_job,
    a_failing_renderer_retries_with_backoff_then_fails_with_its_error,
    cancel_stops_queued_jobs_and_discards_running_ones,
    claimed_jobs_render_together_only_when_they_share_a_shape,
);
