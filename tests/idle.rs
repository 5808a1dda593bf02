//! Idle workers on Redis: a worker waiting on an empty queue sends Redis under two
//! commands a second, and a batch submitted to an idle queue is read when it lands
//! (the doorbell), not when the worker next reads its list of streams.

mod common;

use std::time::Duration;

use common::drill::Drill;

/// Commands Redis has served so far.
async fn commands(d: &Drill) -> u64 {
    let client = redis::Client::open(d.redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut con)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// A worker on its own Redis, with the reconciler (once per queue, not per worker)
/// out of the count.
async fn idle_worker() -> Drill {
    let mut d = Drill::new(None).await;
    d.spawn_worker(&["--reconcile-secs", "600"], 0);
    // It has started, read once and settled into waiting.
    d.submit(1, None);
    d.until(Duration::from_secs(30), "the first job", |rows| {
        rows.iter().all(|r| r.state.is_terminal())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    d
}

#[tokio::test]
async fn an_idle_worker_sends_redis_under_two_commands_a_second() {
    let d = idle_worker().await;
    let window = 12;
    let before = commands(&d).await;
    tokio::time::sleep(Duration::from_secs(window)).await;
    // The INFO that reads the count is one more.
    let sent = commands(&d).await - before - 1;
    let per_second = sent as f64 / window as f64;
    assert!(per_second < 2.0, "{sent} commands in {window} s");
}

#[tokio::test]
async fn a_batch_submitted_to_an_idle_queue_is_read_when_it_lands() {
    let d = idle_worker().await;
    for round in 0..3 {
        d.submit(1, None);
        // Without the doorbell the worker would wait on the streams it knew, and see
        // the new batch's stream only when it read the list again (every 60 s).
        d.until(Duration::from_secs(5), "the new batch's job", |rows| {
            rows.iter().all(|r| r.state.is_terminal())
        })
        .await;
        // The newest job: submitted while the worker waited.
        let (claim_ms,): (f64,) = sqlx::query_as(
            "select (extract(epoch from started_at - created_at) * 1000)::float8 \
             from renderq.jobs order by created_at desc limit 1",
        )
        .fetch_one(&sqlx::PgPool::connect(&d.db_url).await.unwrap())
        .await
        .unwrap();
        assert!(
            claim_ms < 5000.0,
            "round {round}: claimed after {claim_ms} ms"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}
