//! Every arrow of the job lifecycle, walked through the record on each backend, each
//! state checked as the outside sees it: the `renderq_events` NOTIFY on Postgres, the
//! row itself on SQLite.
//!
//! ```text
//! queued ──claim──▶ running ──stored──▶ succeeded
//!    ▲                 │ ├──error, attempts left──▶ retrying ──due──▶ queued
//!    │                 │ └──error, none left / not retryable──▶ failed
//!    └──lease expired or worker dead (reconciler / reclaim); released at drain
//! queued | retrying | running ──cancel──▶ cancelled
//! ```

mod common;

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use common::*;
use renderq::{
    db::{ClaimRequest, Outcome, Recorded},
    job::{JobId, JobState},
};

/// What the outside sees of each job's state.
struct Watch {
    listener: Option<sqlx::postgres::PgListener>,
    /// Announcements read but not yet expected, per job.
    seen: HashMap<JobId, VecDeque<JobState>>,
}

impl Watch {
    async fn new(env: &Env) -> Watch {
        let listener = match env.kind {
            Kind::Sqlite => None,
            _ => {
                let mut l = sqlx::postgres::PgListener::connect(&env.db_url)
                    .await
                    .unwrap();
                l.listen("renderq_events").await.unwrap();
                Some(l)
            }
        };
        Watch {
            listener,
            seen: HashMap::new(),
        }
    }

    /// The job's next state, as announced (Postgres) or read (SQLite), is `want`.
    async fn expect(&mut self, env: &Env, job: JobId, want: JobState) {
        let Some(listener) = &mut self.listener else {
            let states = env.record.states(&[job]).await.unwrap();
            assert_eq!(states[0].1, want, "{job}");
            return;
        };
        loop {
            if let Some(state) = self.seen.get_mut(&job).and_then(VecDeque::pop_front) {
                assert_eq!(state, want, "{job}: announced {state}, expected {want}");
                return;
            }
            let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
                .await
                .unwrap_or_else(|_| panic!("{job}: no announcement of `{want}` within 10 s"))
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(n.payload()).unwrap();
            let id: JobId = v["job_id"].as_str().unwrap().parse().unwrap();
            let state: JobState = v["state"].as_str().unwrap().parse().unwrap();
            self.seen.entry(id).or_default().push_back(state);
        }
    }

    /// No announcement is left unexpected.
    fn assert_drained(&self) {
        let left: Vec<_> = self.seen.iter().filter(|(_, q)| !q.is_empty()).collect();
        assert!(left.is_empty(), "unexpected announcements: {left:?}");
    }
}

async fn claim(env: &Env, id: JobId, takeover: bool) -> renderq::db::Claimed {
    env.record
        .claim(&[ClaimRequest { id, takeover }], "w-lifecycle")
        .await
        .unwrap()
}

/// Claims `id` normally; returns the attempt.
async fn run(env: &Env, id: JobId) -> i32 {
    let claimed = claim(env, id, false).await;
    assert_eq!(claimed.jobs.len(), 1, "{id} claimable");
    claimed.jobs[0].attempt
}

async fn fail(env: &Env, id: JobId, attempt: i32, retry: bool) -> Recorded {
    let outcome = Outcome::Failed {
        error: "device on fire".into(),
        retry,
        backoff_ms: 0,
    };
    env.record
        .record_outcomes(&[(id, attempt, outcome)])
        .await
        .unwrap()[0]
}

async fn every_arrow_of_the_lifecycle(env: Env) {
    use JobState::*;
    let mut watch = Watch::new(&env).await;
    let lines: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"prompt":"job {i}","width":8,"height":8}}"#))
        .collect();
    let jobs = env.jobs(&lines.iter().map(String::as_str).collect::<Vec<_>>());
    env.record
        .create_batch("lifecycle", &env.queue, &jobs, 2)
        .await
        .unwrap();
    let id: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    for j in &id {
        watch.expect(&env, *j, Queued).await;
    }

    // queued → running → succeeded
    let a = run(&env, id[0]).await;
    watch.expect(&env, id[0], Running).await;
    let stored = Outcome::Stored { key: "k".into() };
    env.record
        .record_outcomes(&[(id[0], a, stored)])
        .await
        .unwrap();
    watch.expect(&env, id[0], Succeeded).await;

    // running → retrying → queued → running → failed (no attempt left)
    let a = run(&env, id[1]).await;
    watch.expect(&env, id[1], Running).await;
    assert!(matches!(
        fail(&env, id[1], a, true).await,
        Recorded::Moved(Retrying, _)
    ));
    watch.expect(&env, id[1], Retrying).await;
    assert_eq!(env.record.requeue_due(&[id[1]]).await.unwrap(), vec![id[1]]);
    watch.expect(&env, id[1], Queued).await;
    let a = run(&env, id[1]).await;
    assert_eq!(a, 2);
    watch.expect(&env, id[1], Running).await;
    assert!(matches!(
        fail(&env, id[1], a, true).await,
        Recorded::Moved(Failed, _)
    ));
    watch.expect(&env, id[1], Failed).await;

    // running → failed (not retryable)
    let a = run(&env, id[2]).await;
    watch.expect(&env, id[2], Running).await;
    assert!(matches!(
        fail(&env, id[2], a, false).await,
        Recorded::Moved(Failed, _)
    ));
    watch.expect(&env, id[2], Failed).await;

    // running → queued: released by a draining worker
    let a = run(&env, id[3]).await;
    watch.expect(&env, id[3], Running).await;
    assert_eq!(
        env.record.release(&[(id[3], a)]).await.unwrap(),
        vec![id[3]]
    );
    watch.expect(&env, id[3], Queued).await;

    // running → queued: rescued by the reconciler (worker dead), then on the last
    // attempt running → failed
    let a = run(&env, id[4]).await;
    watch.expect(&env, id[4], Running).await;
    let rescued = env.record.rescue(&[(id[4], a)]).await.unwrap();
    assert_eq!(rescued.requeued, vec![id[4]]);
    watch.expect(&env, id[4], Queued).await;
    let a = run(&env, id[4]).await;
    watch.expect(&env, id[4], Running).await;
    let rescued = env.record.rescue(&[(id[4], a)]).await.unwrap();
    assert_eq!(rescued.failed.len(), 1);
    watch.expect(&env, id[4], Failed).await;

    // lease expired (reclaim): running → running under the next attempt, then on the
    // last attempt running → failed
    let first = run(&env, id[5]).await;
    watch.expect(&env, id[5], Running).await;
    let taken = claim(&env, id[5], true).await;
    assert_eq!(
        taken.jobs[0].attempt,
        first + 1,
        "taken over, attempt bumped"
    );
    let last = claim(&env, id[5], true).await;
    assert!(last.jobs.is_empty());
    assert_eq!(
        last.failed.len(),
        1,
        "a takeover on the last attempt fails the job"
    );
    watch.expect(&env, id[5], Failed).await;
    let states = env.record.states(&[id[5]]).await.unwrap();
    assert_eq!(states[0].2, 2, "no third attempt");

    // queued → cancelled
    env.record.cancel(id[6].0).await.unwrap();
    watch.expect(&env, id[6], Cancelled).await;

    // retrying → cancelled
    let a = run(&env, id[7]).await;
    watch.expect(&env, id[7], Running).await;
    fail(&env, id[7], a, true).await;
    watch.expect(&env, id[7], Retrying).await;
    env.record.cancel(id[7].0).await.unwrap();
    watch.expect(&env, id[7], Cancelled).await;

    // running → cancelled; the attempt's late result is fenced out
    let a = run(&env, id[8]).await;
    watch.expect(&env, id[8], Running).await;
    env.record.cancel(id[8].0).await.unwrap();
    watch.expect(&env, id[8], Cancelled).await;
    let late = env
        .record
        .record_outcomes(&[(id[8], a, Outcome::Stored { key: "k".into() })])
        .await
        .unwrap();
    assert_eq!(late, vec![Recorded::Stale]);

    // Terminal states stay terminal: nothing claims, releases or cancels them.
    for j in [id[0], id[1], id[6]] {
        assert!(claim(&env, j, true).await.jobs.is_empty());
    }
    assert_eq!(env.record.cancel(id[0].0).await.unwrap().jobs, 0);
    let final_states: HashMap<JobId, JobState> = env
        .record
        .states(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|(j, s, _)| (j, s))
        .collect();
    assert_eq!(
        final_states[&id[9]], Queued,
        "an untouched job stays queued"
    );
    // Announcements arrive in commit order: once this one is in, every earlier one
    // is, and none may be left unexpected.
    assert_eq!(run(&env, id[9]).await, 1);
    watch.expect(&env, id[9], Running).await;
    watch.assert_drained();

    // Every attempt that ended other than in success is kept in the job's history,
    // whoever ended it; claims and completions add nothing of their own.
    let want: [&[(i32, &str)]; 10] = [
        &[(1, "succeeded")],
        &[(1, "retrying"), (2, "failed")],
        &[(1, "failed")],
        &[(1, "queued")],
        &[(1, "queued"), (2, "failed")],
        &[(1, "running"), (2, "failed")],
        &[],
        &[(1, "retrying")],
        &[(1, "cancelled")],
        &[(1, "running")],
    ];
    for (j, want) in id.iter().zip(want) {
        let detail = env.record.job_detail(*j).await.unwrap().unwrap();
        let history: Vec<(i32, &str)> = detail
            .attempts
            .iter()
            .map(|a| (a.attempt, a.outcome.as_str()))
            .collect();
        assert_eq!(history, want, "{j}: its attempt history");
    }
}

conformance!(every_arrow_of_the_lifecycle);
