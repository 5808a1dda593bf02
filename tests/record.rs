//! The Postgres record at scale: announcements of bulk state changes, and the plans
//! of the worker's statements on a table whose statistics say nothing is running.

mod common;

use std::{collections::HashMap, time::Duration};

use common::*;
use renderq::{
    db::{Attempts, Batches, ClaimRequest, Fleet, Outcome, Record, Recorded, postgres::PgRecord},
    job::{BatchId, JobId, JobSpec, JobState, Limits},
};
use sqlx::Row;

/// Every job of a bulk claim and completion is announced once per state change, and
/// an update that changes no state announces nothing.
#[tokio::test]
async fn bulk_state_changes_announce_each_job_once() {
    let env = Env::new().await;
    let mut listener = listen(&env).await;
    let lines: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"prompt":"job {i}","width":16,"height":16}}"#))
        .collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let (done, ids) = submit(&env, env.record.as_ref(), &lines).await;
    let claimed = claim_all(env.record.as_ref(), &ids).await;
    let outcomes: Vec<_> = claimed
        .iter()
        .map(|(id, attempt)| {
            let key = format!("k/{id}");
            (*id, *attempt, Outcome::Stored { key })
        })
        .collect();
    let recorded = env.record.record_outcomes(&outcomes).await.unwrap();
    assert!(recorded.iter().all(|r| matches!(r, Recorded::Moved(..))));

    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    while seen.values().map(Vec::len).sum::<usize>() < 3 * lines.len() {
        let v = next_event(&mut listener).await;
        assert_eq!(v["batch_id"], done.batch.to_string());
        let job = v["job_id"].as_str().unwrap().to_string();
        seen.entry(job)
            .or_default()
            .push(v["state"].as_str().unwrap().into());
    }
    assert_eq!(seen.len(), lines.len());
    for id in &ids {
        assert_eq!(
            seen[&id.to_string()],
            ["queued", "running", "succeeded"],
            "{id}"
        );
    }

    // From psql, as a client would: a change of another column is not announced, a
    // change of state is (the first event after both must be the cancel).
    let pool = sqlx::PgPool::connect(&env.db_url).await.unwrap();
    sqlx::query("UPDATE renderq.jobs SET error = 'note' WHERE batch_id = $1")
        .bind(done.batch.0)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE renderq.jobs SET state = 'cancelled' WHERE id = $1")
        .bind(ids[0].0)
        .execute(&pool)
        .await
        .unwrap();
    let v = next_event(&mut listener).await;
    assert_eq!(v["job_id"], ids[0].to_string());
    assert_eq!(v["state"], "cancelled");
    env.forget_queue_keys().await;
}

/// The payload is byte for byte what `json_build_object` makes (a client may compare
/// strings, not only parse them), with a null batch for raw jobs, for inserts and
/// updates alike.
#[tokio::test]
async fn announcements_are_byte_identical_to_json_build_object() {
    let env = Env::new().await;
    let mut listener = listen(&env).await;
    let pool = sqlx::PgPool::connect(&env.db_url).await.unwrap();
    let (_, ids) = submit(&env, env.record.as_ref(), &[r#"{"prompt":"a"}"#]).await;
    let raw: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO renderq.jobs (id, queue, model, seed, spec)
         VALUES (gen_random_uuid(), 'raw', 'noop', 1, '{}') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let both = vec![ids[0].0, raw];
    sqlx::query("UPDATE renderq.jobs SET state = 'cancelled' WHERE id = ANY($1)")
        .bind(&both)
        .execute(&pool)
        .await
        .unwrap();
    let mut expected = Vec::new();
    for id in &both {
        for state in ["queued", "cancelled"] {
            let text: String = sqlx::query_scalar(
                "SELECT json_build_object('job_id', id, 'batch_id', batch_id, 'state', $2::text)::text
                 FROM renderq.jobs WHERE id = $1",
            )
            .bind(id)
            .bind(state)
            .fetch_one(&pool)
            .await
            .unwrap();
            expected.push(text);
        }
    }
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        got.push(next_payload(&mut listener).await);
    }
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    assert!(
        got.iter().any(|p| p.contains(r#""batch_id" : null"#)),
        "{got:?}"
    );
    env.forget_queue_keys().await;
}

/// A table of finished jobs (the normal case after a few catalogues) makes the
/// planner estimate ~0 queued or running rows. Claims and completions find jobs by id
/// and must do so through the primary key then: a scan by state (of the running-jobs
/// index, or of a batch's states) once made every completion chunk walk all running
/// and dead entries, and a drain four times slower.
#[tokio::test]
async fn claims_and_completions_find_jobs_by_primary_key_when_statistics_are_stale() {
    let env = Env::new().await;
    // Statistics reach the views when a backend has been idle a while, or at once
    // when it exits: each step runs on a pool of its own, closed afterwards.
    let (old, _) = {
        let rec = PgRecord::connect(&env.db_url, false).await.unwrap();
        let done = submit(&env, &rec, &[r#"{"prompt":"old","width":16,"height":16}"#]).await;
        rec.pool().close().await;
        done
    };
    {
        // 100,000 finished jobs, then fresh statistics.
        let pool = sqlx::PgPool::connect(&env.db_url).await.unwrap();
        add_finished_jobs(&pool, &env, old.batch).await;
        sqlx::query("ANALYZE renderq.jobs")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let lines: Vec<String> = (0..200)
        .map(|i| format!(r#"{{"prompt":"new {i}","width":16,"height":16}}"#))
        .collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let ids = {
        let rec = PgRecord::connect(&env.db_url, false).await.unwrap();
        let (_, ids) = submit(&env, &rec, &lines).await;
        rec.pool().close().await;
        ids
    };
    let pool = sqlx::PgPool::connect(&env.db_url).await.unwrap();
    let before = settled_scans(&pool, None).await;

    let rec = PgRecord::connect(&env.db_url, false).await.unwrap();
    let claimed = claim_all(&rec, &ids).await;
    let outcomes: Vec<_> = claimed
        .iter()
        .map(|(id, attempt)| (*id, *attempt, Outcome::Stored { key: "k".into() }))
        .collect();
    let recorded = rec.record_outcomes(&outcomes).await.unwrap();
    assert!(recorded.iter().all(|r| matches!(r, Recorded::Moved(..))));
    rec.pool().close().await;
    let after = settled_scans(&pool, Some(&before)).await;

    let delta = |k: &str| after[k] - before[k];
    // One probe per job for the claim, one for the completion.
    assert!(delta("jobs_pkey") >= 2 * 200, "{before:?} → {after:?}");
    for (k, _) in after.iter().filter(|(k, _)| k.as_str() != "jobs_pkey") {
        assert_eq!(delta(k), 0, "{k} was scanned: {before:?} → {after:?}");
    }
    env.forget_queue_keys().await;
}

/// Jobs running under Redis dispatch are not in the running-jobs index (it holds only
/// database leases, migration 10), so the reconciler finds them by batch and state. On
/// a table of finished jobs it must still find every running job of a dead worker, in
/// a batch or raw, without scanning the table.
#[tokio::test]
async fn the_reconciler_finds_running_jobs_of_dead_workers_without_scanning_the_table() {
    let env = Env::new().await;
    let rec = PgRecord::connect(&env.db_url, false).await.unwrap();
    let (old, waiting) = submit(
        &env,
        &rec,
        &[r#"{"prompt":"waits","width":16,"height":16}"#],
    )
    .await;
    add_finished_jobs(rec.pool(), &env, old.batch).await;
    let (_, mut ids) = submit(
        &env,
        &rec,
        &[
            r#"{"prompt":"a","width":16,"height":16}"#,
            r#"{"prompt":"b","width":16,"height":16}"#,
        ],
    )
    .await;
    let raw = JobId::generate();
    let spec = JobSpec::parse(
        r#"{"prompt":"raw","width":16,"height":16}"#,
        &Limits::default(),
    )
    .unwrap();
    rec.ensure_raw_job(raw, &env.queue, &spec, 3).await.unwrap();
    ids.push(raw);
    // Claimed by a worker that never wrote a heartbeat: a dead one.
    claim_all(&rec, &ids).await;
    sqlx::query("ANALYZE renderq.jobs")
        .execute(rec.pool())
        .await
        .unwrap();
    rec.pool().close().await;

    let pool = sqlx::PgPool::connect(&env.db_url).await.unwrap();
    let before = settled_scans(&pool, None).await;
    let pages_before = index_pages_visited(&pool).await;
    let rec = PgRecord::connect(&env.db_url, false).await.unwrap();
    let found = rec.orphans(&env.queue, 0, 100).await.unwrap();
    let queued = rec
        .unfinished_page(&env.queue, JobState::Queued, None, 100)
        .await
        .unwrap();
    let retrying = rec
        .unfinished_page(&env.queue, JobState::Retrying, None, 100)
        .await
        .unwrap();
    rec.pool().close().await;
    let after = settled_scans(&pool, Some(&before)).await;
    let pages = index_pages_visited(&pool).await - pages_before;

    let mut orphaned: Vec<JobId> = found.iter().map(|(id, _)| *id).collect();
    orphaned.sort_by_key(|id| id.0);
    ids.sort_by_key(|id| id.0);
    assert_eq!(orphaned, ids);
    assert!(found.iter().all(|(_, attempt)| *attempt == 1));
    assert_eq!(
        queued.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        waiting
    );
    assert!(retrying.is_empty());
    assert_eq!(after["seq"], before["seq"], "{before:?} → {after:?}");
    // Work in proportion to the unfinished jobs, not to the table: a walk through a
    // whole index (the planner's choice for `state IN (…)` without the batch) visits
    // hundreds of pages.
    assert!(pages < 50, "{pages} index pages visited");
    env.forget_queue_keys().await;
}

/// A batch's last job ending while `renderq retry` requeues its failed jobs (in one
/// transaction, still open) must not finish the batch: the check has to see the
/// requeued jobs once retry's lock on the batch is granted. A check on the snapshot
/// taken before the wait marked the batch finished, with a job queued again.
#[tokio::test]
async fn a_batch_is_not_finished_under_jobs_that_retry_requeues() {
    let env = Env::new().await;
    let rec = PgRecord::connect(&env.db_url, false).await.unwrap();
    let (done, ids) = submit(
        &env,
        &rec,
        &[
            r#"{"prompt":"fails","width":16,"height":16}"#,
            r#"{"prompt":"runs","width":16,"height":16}"#,
        ],
    )
    .await;
    let claimed = claim_all(&rec, &ids).await;
    let failed = Outcome::Failed {
        error: "boom".into(),
        retry: false,
        backoff_ms: 0,
    };
    rec.record_outcomes(&[(claimed[0].0, claimed[0].1, failed)])
        .await
        .unwrap();

    // What `retry_failed` does, held open: requeue the failed job, clear the mark.
    let pool = sqlx::PgPool::connect(&env.db_url).await.unwrap();
    let mut retry = pool.begin().await.unwrap();
    sqlx::query("UPDATE renderq.jobs SET state = 'queued', finished_at = NULL WHERE id = $1")
        .bind(claimed[0].0.0)
        .execute(&mut *retry)
        .await
        .unwrap();
    sqlx::query("UPDATE renderq.batches SET finished_at = NULL WHERE id = $1")
        .bind(done.batch.0)
        .execute(&mut *retry)
        .await
        .unwrap();

    // Meanwhile the other job succeeds and its worker asks whether the batch is done.
    let stored = Outcome::Stored { key: "k".into() };
    rec.record_outcomes(&[(claimed[1].0, claimed[1].1, stored)])
        .await
        .unwrap();
    let finisher = {
        let url = env.db_url.clone();
        let batch = done.batch;
        tokio::spawn(async move {
            let rec = PgRecord::connect(&url, false).await.unwrap();
            rec.finish_batches(&[batch]).await.unwrap()
        })
    };
    // Commit only once the check waits for the batch's row lock.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the check never waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    retry.commit().await.unwrap();

    let finished = finisher.await.unwrap();
    assert!(
        finished.is_empty(),
        "finished under a requeued job: {finished:?}"
    );
    let mark: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT finished_at FROM renderq.batches WHERE id = $1")
            .bind(done.batch.0)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(mark, None);
    env.forget_queue_keys().await;
}

/// 100,000 finished jobs in `batch`: the table after a few catalogues.
async fn add_finished_jobs(pool: &sqlx::PgPool, env: &Env, batch: BatchId) {
    sqlx::query(
        "INSERT INTO renderq.jobs (id, batch_id, queue, state, model, seed, spec, finished_at)
         SELECT gen_random_uuid(), $1, $2, 'succeeded', 'placeholder', g, '{}', now()
         FROM generate_series(1, 100000) g",
    )
    .bind(batch.0)
    .bind(&env.queue)
    .execute(pool)
    .await
    .unwrap();
}

async fn submit(
    env: &Env,
    record: &dyn Record,
    lines: &[&str],
) -> (renderq::submit::Submitted, Vec<JobId>) {
    let jobs = env.jobs(lines);
    let ids = jobs.iter().map(|j| j.id).collect();
    let done = renderq::submit::submit(record, env.dispatch.as_ref(), "t", &jobs, 3)
        .await
        .unwrap();
    (done, ids)
}

async fn claim_all(record: &dyn Record, ids: &[JobId]) -> Vec<(JobId, i32)> {
    let requests: Vec<_> = ids
        .iter()
        .map(|id| ClaimRequest {
            id: *id,
            takeover: false,
        })
        .collect();
    let claimed = record.claim(&requests, "w-test").await.unwrap().jobs;
    assert_eq!(claimed.len(), ids.len());
    claimed.into_iter().map(|c| (c.id, c.attempt)).collect()
}

async fn listen(env: &Env) -> sqlx::postgres::PgListener {
    let mut listener = sqlx::postgres::PgListener::connect(&env.db_url)
        .await
        .unwrap();
    listener.listen("renderq_events").await.unwrap();
    listener
}

/// The next announcement's raw payload.
async fn next_payload(listener: &mut sqlx::postgres::PgListener) -> String {
    let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("an event within 10 s")
        .unwrap();
    n.payload().to_string()
}

async fn next_event(listener: &mut sqlx::postgres::PgListener) -> serde_json::Value {
    serde_json::from_str(&next_payload(listener).await).unwrap()
}

/// Index pages of `renderq.jobs` visited so far, all its indexes together (call it
/// once `settled_scans` says the figures are flushed). Pages, not entries: an index
/// scan counts only the entries it returns, not the ones it walked past.
async fn index_pages_visited(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT sum(idx_blks_read + idx_blks_hit)::bigint FROM pg_statio_user_indexes
         WHERE schemaname = 'renderq' AND relname = 'jobs'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Scans of `renderq.jobs` by index (and `seq` for sequential scans), once the
/// figures have moved past `than` (the backends flush them as they exit).
async fn settled_scans(
    pool: &sqlx::PgPool,
    than: Option<&HashMap<String, i64>>,
) -> HashMap<String, i64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut last = None;
    loop {
        let mut now: HashMap<String, i64> = sqlx::query(
            "SELECT indexrelname::text, idx_scan FROM pg_stat_user_indexes
             WHERE schemaname = 'renderq' AND relname = 'jobs'",
        )
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
        let seq: i64 = sqlx::query_scalar(
            "SELECT seq_scan FROM pg_stat_user_tables WHERE schemaname = 'renderq' AND relname = 'jobs'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        now.insert("seq".into(), seq);
        let moved = match than {
            None => true,
            Some(t) => now.iter().any(|(k, v)| t.get(k) != Some(v)),
        };
        // Moved, and then still for half a second: every backend has flushed.
        if moved && last.as_ref() == Some(&now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "index statistics did not settle within 15 s: {now:?}"
        );
        last = moved.then_some(now);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
