//! Rows a claim cannot trust: written by hand into the record (SQL users, raw
//! producers, an older version). Only the bad row fails, with a reason; the rest of
//! its claim chunk runs, and nothing is written outside the store.

mod common;

use std::time::Duration;

use common::*;
use renderq::job::JobState;
use renderq::render::Renderers;

/// The job at `index` in submission order.
async fn nth_id(env: &Env, index: usize) -> uuid::Uuid {
    let mut rows = env.record.jobs_of_queue(&env.queue).await.unwrap();
    rows.remove(index).id.0
}

async fn an_undecodable_stored_spec_fails_only_its_row(env: Env) {
    let lines: Vec<String> = (0..6)
        .map(|i| format!(r#"{{"prompt":"p{i}","width":8,"height":8}}"#))
        .collect();
    let done = env
        .submit(&lines.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let bad = nth_id(&env, 2).await;
    env.exec(&format!(
        r#"UPDATE {{jobs}} SET spec = '{{"width": "wide"}}' WHERE id = '{bad}'"#
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let rows = env
        .work_until_done(
            6,
            Renderers::builtin(0),
            dir.path(),
            Duration::from_secs(30),
        )
        .await;
    for row in &rows {
        if row.id.0 == bad {
            assert_eq!((row.state, row.attempt), (JobState::Failed, 1), "{rows:?}");
            let error = row.error.as_deref().unwrap_or_default();
            assert!(error.contains("not a valid job"), "{error}");
        } else {
            assert_eq!(
                (row.state, row.attempt),
                (JobState::Succeeded, 1),
                "{rows:?}"
            );
        }
    }
    assert!(
        env.record
            .batch_finished_at(done.batch)
            .await
            .unwrap()
            .is_some(),
        "the batch finished"
    );
    env.assert_dispatch_empty().await;
}

async fn a_stored_key_that_escapes_the_store_is_refused_at_claim(env: Env) {
    env.submit(&[
        r#"{"prompt":"fine","width":8,"height":8}"#,
        r#"{"prompt":"sneaky","width":8,"height":8}"#,
    ])
    .await;
    let bad = nth_id(&env, 1).await;
    env.exec(&format!(
        r#"UPDATE {{jobs}} SET spec = '{{"prompt":"sneaky","width":8,"height":8,"output_key":"../../escaped"}}' WHERE id = '{bad}'"#
    ))
    .await;
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("a").join("store");
    std::fs::create_dir_all(&root).unwrap();
    let rows = env
        .work_until_done(2, Renderers::builtin(0), &root, Duration::from_secs(30))
        .await;
    let sneaky = rows.iter().find(|r| r.id.0 == bad).unwrap();
    assert_eq!(sneaky.state, JobState::Failed, "{rows:?}");
    let error = sneaky.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("refused at claim") && error.contains("output_key"),
        "{error}"
    );
    assert!(
        rows.iter()
            .any(|r| r.id.0 != bad && r.state == JobState::Succeeded)
    );
    let outside: Vec<_> = std::fs::read_dir(parent.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        outside,
        vec![std::ffi::OsString::from("a")],
        "nothing outside"
    );
}

conformance!(
    an_undecodable_stored_spec_fails_only_its_row,
    a_stored_key_that_escapes_the_store_is_refused_at_claim,
);

/// A raw message over the line limit is refused by its length before it is parsed,
/// recorded as a failed job with the reason and only the start of its text, and the
/// message after it is rendered.
#[tokio::test]
async fn an_oversized_raw_message_fails_alone() {
    let env = Env::new().await;
    let huge = format!(
        r#"{{"prompt":"{}","width":8,"height":8}}"#,
        "x".repeat(1 << 20)
    );
    let mut con = env.redis().await;
    for job in [huge.as_str(), r#"{"prompt":"fine","width":8,"height":8}"#] {
        let _: String = redis::cmd("XADD")
            .arg(env.stream())
            .arg("*")
            .arg("job")
            .arg(job)
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let rows = env
        .work_until_done(
            2,
            Renderers::builtin(0),
            dir.path(),
            Duration::from_secs(30),
        )
        .await;
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| r.state == JobState::Failed)
        .collect();
    assert_eq!(failed.len(), 1, "{rows:?}");
    let error = failed[0].error.as_deref().unwrap();
    assert!(
        error.contains("bytes is over the limit of 65536"),
        "{error}"
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r.state == JobState::Succeeded)
            .count(),
        1
    );
    let stored: String =
        sqlx::query_scalar("SELECT spec->>'raw' FROM renderq.jobs WHERE state = 'failed'")
            .fetch_one(&sqlx::PgPool::connect(&env.db_url).await.unwrap())
            .await
            .unwrap();
    assert!(
        stored.len() <= 4096,
        "{} bytes of the message kept",
        stored.len()
    );
    env.assert_dispatch_empty().await;
}
