//! `priority`: a higher priority is claimed first on every backend, across batches
//! and within one; a delivery given back keeps its place.

mod common;

use std::collections::HashSet;

use common::*;
use renderq::{dispatch::Payload, job::JobId};

/// Submits `n` 8×8 jobs as one batch, the last `urgent` of them at `priority`;
/// returns the ids of those.
async fn submit(env: &Env, n: usize, urgent: usize, priority: i32) -> HashSet<JobId> {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let p = if i >= n - urgent { priority } else { 0 };
            format!(r#"{{"prompt":"job {i}","width":8,"height":8,"priority":{p}}}"#)
        })
        .collect();
    let jobs = env.jobs(&lines.iter().map(String::as_str).collect::<Vec<_>>());
    renderq::submit::submit(env.record.as_ref(), env.dispatch.as_ref(), "p", &jobs, 3)
        .await
        .unwrap();
    jobs[n - urgent..].iter().map(|j| j.id).collect()
}

/// The ids of up to `count` deliveries, with their handles.
async fn fetch(env: &Env, count: usize) -> Vec<(JobId, String)> {
    env.dispatch
        .fetch("w-priority", count, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|d| match d.payload {
            Payload::Id(id) => (id, d.entry),
            other => panic!("unexpected payload {other:?}"),
        })
        .collect()
}

async fn higher_priorities_are_claimed_first(env: Env) {
    // One job at 10 behind 10,000 at 0 in the same batch; then another batch with
    // three jobs at 5, and one with two at 10.
    let mut tens = submit(&env, 10_001, 1, 10).await;
    let fives = submit(&env, 3, 3, 5).await;
    tens.extend(submit(&env, 2, 2, 10).await);

    let first = fetch(&env, 3).await;
    let got: HashSet<JobId> = first.iter().map(|d| d.0).collect();
    assert_eq!(got, tens, "the first read takes every job at 10");

    // Given back, a job keeps its priority: it comes before the fives.
    let (id, handle) = &first[0];
    env.dispatch.release(handle, *id).await.unwrap();
    let again = fetch(&env, 1).await;
    assert_eq!(again[0].0, *id);

    let next: HashSet<JobId> = fetch(&env, 3).await.into_iter().map(|d| d.0).collect();
    assert_eq!(next, fives, "then the fives");
    let rest = fetch(&env, 50).await;
    assert!(!rest.is_empty());
    assert!(
        rest.iter()
            .all(|d| !tens.contains(&d.0) && !fives.contains(&d.0)),
        "then the rest"
    );
    env.forget_queue_keys_if_redis().await;
}

/// On Redis a retry waits in the delayed set; when it is due it goes back to its
/// batch's stream of its priority, not to the main stream, and is served first again.
#[tokio::test]
async fn a_retry_keeps_its_priority_on_redis() {
    let env = Env::new().await;
    let urgent = submit(&env, 500, 1, 10).await;
    let first = fetch(&env, 1).await;
    assert!(urgent.contains(&first[0].0));
    let (id, handle) = &first[0];
    let now = chrono::Utc::now().timestamp_millis();
    let delayed = env.dispatch.delayed().expect("Redis keeps a delayed set");
    delayed.defer(handle, *id, now).await.unwrap();
    assert_eq!(delayed.due(now, 10).await.unwrap().ids, vec![*id]);
    assert_eq!(delayed.move_due(&[*id]).await.unwrap(), 1);
    let main: usize = redis::cmd("XLEN")
        .arg(env.stream())
        .query_async(&mut env.redis().await)
        .await
        .unwrap();
    assert_eq!(main, 0, "not put on the main stream");
    // The 499 others wait at priority 0: the next read takes the retry first.
    let next = fetch(&env, 1).await;
    assert_eq!(next[0].0, *id, "served before the priority-0 jobs");
    env.forget_queue_keys().await;
}

/// Renders each job alone, recording prompts in the order it saw them.
#[derive(Default)]
struct Order(std::sync::Mutex<Vec<String>>);

#[async_trait::async_trait]
impl renderq::render::Renderer for Order {
    async fn render(
        &self,
        batch: &[renderq::render::RenderRequest],
    ) -> Vec<Result<image::RgbImage, renderq::render::RenderError>> {
        let mut seen = self.0.lock().unwrap();
        batch
            .iter()
            .map(|r| {
                seen.push(r.prompt.clone());
                Ok(image::RgbImage::new(r.width, r.height))
            })
            .collect()
    }
}

/// Redis cannot see a priority inside a raw producer's message, so the message is
/// read at priority 0's level; a worker that reads one naming another priority moves
/// it to that priority's lane. A raw job at -5 is rendered after the batch at 0.
#[tokio::test]
async fn a_raw_message_is_served_at_the_priority_it_names() {
    let env = Env::new().await;
    submit(&env, 30, 0, 0).await;
    let raw = r#"{"prompt":"raw, low","width":8,"height":8,"priority":-5}"#;
    let _: String = redis::cmd("XADD")
        .arg(env.stream())
        .arg("*")
        .arg("job")
        .arg(raw)
        .query_async(&mut env.redis().await)
        .await
        .unwrap();
    let order = std::sync::Arc::new(Order::default());
    let mut renderers = renderq::render::Renderers::builtin(0);
    renderers.insert("placeholder", order.clone());
    let cfg = renderq::worker::WorkerConfig {
        concurrency: 1,
        max_batch: 1,
        ..fast_config()
    };
    let dir = tempfile::tempdir().unwrap();
    let (stop, h) = env.spawn_worker(
        cfg,
        std::sync::Arc::new(renderq::store::DirStore::new(dir.path())),
        renderers,
    );
    env.wait_terminal(31, std::time::Duration::from_secs(60))
        .await;
    stop.cancel();
    h.await.unwrap();
    let order = order.0.lock().unwrap().clone();
    assert_eq!(order.len(), 31, "{order:?}");
    assert_eq!(order.last().unwrap(), "raw, low", "{order:?}");
    env.forget_queue_keys().await;
}

/// A job's priority is checked at the edge like every field.
#[test]
fn a_priority_out_of_range_is_refused_naming_the_field() {
    let limits = renderq::job::Limits::default();
    let err =
        renderq::job::JobSpec::parse(r#"{"prompt":"x","priority":5000}"#, &limits).unwrap_err();
    assert_eq!(err.field, "priority");
    assert!(renderq::job::JobSpec::parse(r#"{"prompt":"x","priority":-1000}"#, &limits).is_ok());
}

conformance!(higher_priorities_are_claimed_first);
