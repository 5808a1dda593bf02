//! Failure drills: real `renderq worker` processes against real Postgres, Redis and
//! s3s-fs, with faults injected from outside. Each drill owns its Redis and its S3
//! server (so it may flush, kill and restart them) and its database. After the fault
//! every job must end with exactly one `succeeded` row, exactly one `succeeded` event
//! and exactly one object at its key.
//!
//! Lines starting `DRILL` are the figures the README quotes.

mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::drill::*;

/// Kills `victim` with SIGKILL while it holds jobs; returns how long until all of
/// them were running again (or finished) under another attempt.
async fn kill_and_time_rescue(d: &mut Drill, victim: &str) -> Duration {
    d.until(Duration::from_secs(30), "victim holds jobs", |rows| {
        rows.iter().any(|r| {
            r.worker.as_deref() == Some(victim) && r.state == renderq::job::JobState::Running
        })
    })
    .await;
    let held: HashMap<_, _> = d
        .rows()
        .await
        .into_iter()
        .filter(|r| {
            r.worker.as_deref() == Some(victim) && r.state == renderq::job::JobState::Running
        })
        .map(|r| (r.id, r.attempt))
        .collect();
    d.signal(victim, "KILL");
    let killed = Instant::now();
    d.until(
        Duration::from_secs(60),
        "the victim's jobs run again",
        |rows| {
            rows.iter()
                .filter(|r| held.contains_key(&r.id))
                .all(|r| r.attempt > held[&r.id] || r.state.is_terminal())
        },
    )
    .await;
    killed.elapsed()
}

#[tokio::test]
async fn drill_kill_9_repeatedly() {
    let mut d = Drill::new(None).await;
    // Each kill costs the jobs it held an attempt: give them room for three kills.
    d.submit_with(300, None, 5);
    let lease = ["--lease-secs", "2"];
    let mut victims = vec![d.spawn_worker(&lease, 500), d.spawn_worker(&lease, 500)];
    let mut rescues = Vec::new();
    for round in 0..3 {
        let victim = victims.remove(0);
        rescues.push(kill_and_time_rescue(&mut d, &victim).await);
        victims.push(d.spawn_worker(&lease, 500));
        eprintln!("round {round}: rescued in {:?}", rescues.last().unwrap());
    }
    let (lost, dup) = d.verify(300, true).await;
    d.stop_workers().await;
    let max = rescues.iter().max().unwrap();
    eprintln!(
        "DRILL kill -9 x3 (lease 2 s): lost {lost}, duplicate successes {dup}, death to re-run at most {max:?}"
    );
    assert!(
        *max < Duration::from_secs(2) + Duration::from_secs(3),
        "rescued within the lease (plus a check interval)"
    );
}

#[tokio::test]
async fn drill_kill_9_with_the_default_lease() {
    let mut d = Drill::new(None).await;
    d.submit(40, None);
    let victim = d.spawn_worker(&[], 1000);
    let rescue = async {
        d.until(Duration::from_secs(30), "work started", |rows| {
            rows.iter()
                .any(|r| r.state == renderq::job::JobState::Running)
        })
        .await;
    };
    rescue.await;
    d.spawn_worker(&[], 50);
    let took = kill_and_time_rescue(&mut d, &victim).await;
    let (lost, dup) = d.verify(40, true).await;
    d.stop_workers().await;
    eprintln!(
        "DRILL kill -9 (default lease 15 s): lost {lost}, duplicate successes {dup}, death to re-run {took:?}"
    );
    assert!(took < Duration::from_secs(15 + 3), "{took:?}");
}

#[tokio::test]
async fn drill_sigstop_past_the_lease_then_sigcont() {
    let mut d = Drill::new(None).await;
    d.submit(40, None);
    let lease = ["--lease-secs", "2"];
    let sleeper = d.spawn_worker(&lease, 400);
    d.until(Duration::from_secs(30), "the sleeper holds jobs", |rows| {
        rows.iter().any(|r| {
            r.worker.as_deref() == Some(sleeper.as_str())
                && r.state == renderq::job::JobState::Running
        })
    })
    .await;
    let held: HashMap<_, _> = d
        .rows()
        .await
        .into_iter()
        .filter(|r| {
            r.worker.as_deref() == Some(sleeper.as_str())
                && r.state == renderq::job::JobState::Running
        })
        .map(|r| (r.id, r.attempt))
        .collect();
    d.signal(&sleeper, "STOP");
    d.spawn_worker(&lease, 50);
    // Past the lease, another worker takes the sleeper's jobs over: each runs again
    // under a later attempt (or has finished under one).
    d.until(
        Duration::from_secs(30),
        "the sleeper's jobs are taken over",
        |rows| {
            rows.iter()
                .filter(|r| held.contains_key(&r.id))
                .all(|r| r.attempt > held[&r.id])
        },
    )
    .await;
    d.signal(&sleeper, "CONT"); // wakes up and tries to complete its stale attempts
    let (lost, dup) = d.verify(40, true).await;
    d.stop_workers().await;
    eprintln!("DRILL SIGSTOP past the lease, SIGCONT: lost {lost}, duplicate successes {dup}");
}

#[tokio::test]
async fn drill_redis_flushall_then_restart() {
    let mut d = Drill::new(None).await;
    d.submit(80, None);
    d.spawn_worker(&["--lease-secs", "2"], 100);
    d.spawn_worker(&["--lease-secs", "2"], 100);
    d.until(Duration::from_secs(30), "some done", |rows| {
        rows.iter()
            .filter(|r| r.state == renderq::job::JobState::Succeeded)
            .count()
            >= 10
    })
    .await;
    sh(
        "redis-cli",
        &["-p", &d.redis.0.port.to_string(), "FLUSHALL"],
    );
    d.until(Duration::from_secs(30), "more done", |rows| {
        rows.iter()
            .filter(|r| r.state == renderq::job::JobState::Succeeded)
            .count()
            >= 40
    })
    .await;
    d.redis.0.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.redis.0.up().await; // empty: no persistence
    let (lost, dup) = d.verify(80, true).await;
    d.stop_workers().await;
    eprintln!(
        "DRILL Redis FLUSHALL then restart mid-batch: lost {lost}, duplicate successes {dup}"
    );
}

fn succeeded(rows: &[renderq::db::JobRow]) -> usize {
    rows.iter()
        .filter(|r| r.state == renderq::job::JobState::Succeeded)
        .count()
}

/// A failover drill on the Redis `url` names: 300 jobs, two workers; once 40 are done
/// `kill_master` kills the master of the drill's queue (it never comes back),
/// `promoted` says when the topology has a new one, and then every job must still
/// succeed exactly once. Both are given the key of the queue's main stream.
async fn failover_mid_batch(
    what: &str,
    url: String,
    kill_master: impl FnOnce(&str),
    promoted: impl Fn(&str) -> Result<(), String>,
) {
    let mut d = Drill::new(None).await;
    d.redis_url = Some(url);
    let n = 300;
    d.submit(n, None);
    d.spawn_worker(&["--lease-secs", "2"], 100);
    d.spawn_worker(&["--lease-secs", "2"], 100);
    d.until(Duration::from_secs(30), "some done", |rows| {
        succeeded(rows) >= 40
    })
    .await;
    let stream = format!("renderq:{{{}}}:stream", d.queue);
    kill_master(&stream);
    let killed = Instant::now();
    let done_at_kill = succeeded(&d.rows().await);
    assert!(done_at_kill < n, "the batch ended before the failover");
    while let Err(seen) = promoted(&stream) {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no failover within 30 s: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted = killed.elapsed();
    let (lost, dup) = d.verify(n, true).await;
    let finished = killed.elapsed();
    d.stop_workers().await;
    eprintln!(
        "DRILL {what} failover mid-batch: promoted after {:.1} s, batch done {:.1} s after the kill ({done_at_kill} of {n} done before it), lost {lost}, duplicate successes {dup}",
        promoted.as_secs_f64(),
        finished.as_secs_f64(),
    );
}

/// Redis managed by Sentinel: the master is killed mid-batch and never comes back, the
/// sentinel promotes the replica, and the workers find the new master on their own.
/// What the replica had not yet received when the master died (asynchronous
/// replication) is what the reconciler puts back from the record.
#[tokio::test]
async fn drill_sentinel_failover_mid_batch() {
    let redis = std::sync::Mutex::new(PrivateSentinel::start().await);
    let url = redis.lock().unwrap().url();
    failover_mid_batch(
        "Sentinel",
        url,
        |_| {
            // The replica stops for half a second (less than the sentinel's 1 s
            // down-after, so it stays eligible) while the master takes writes it will
            // never pass on: the master then dies with those writes.
            let mut r = redis.lock().unwrap();
            let replica = r.replica.child.as_ref().unwrap().id().to_string();
            let before = PrivateSentinel::offset(r.master.port);
            sh("kill", &["-STOP", &replica]);
            std::thread::sleep(Duration::from_millis(500));
            let unreplicated = PrivateSentinel::offset(r.master.port) - before;
            r.master.kill();
            sh("kill", &["-CONT", &replica]);
            assert!(unreplicated > 0, "the workers wrote nothing meanwhile");
            eprintln!("DRILL Sentinel: the master died {unreplicated} bytes of writes ahead of its replica");
        },
        |_| {
            let r = redis.lock().unwrap();
            match r.master_port() {
                p if p == r.replica.port => Ok(()),
                p => Err(format!("the sentinel names port {p}")),
            }
        },
    )
    .await;
}

/// A Redis Cluster of three masters with a replica each: the master that holds the
/// queue's slot is killed mid-batch and never comes back, the cluster promotes its
/// replica, and the workers follow the slot to it on their own.
#[tokio::test]
async fn drill_cluster_failover_mid_batch() {
    let redis = std::sync::Mutex::new(PrivateCluster::start().await);
    let url = redis.lock().unwrap().url();
    let old = std::sync::Mutex::new(0);
    failover_mid_batch(
        "Cluster",
        url,
        |stream| {
            let mut r = redis.lock().unwrap();
            let port = r.master_of(stream);
            *old.lock().unwrap() = port;
            r.node(port).kill();
        },
        |stream| {
            let r = redis.lock().unwrap();
            match r.master_of(stream) {
                p if p != 0 && p != *old.lock().unwrap() => Ok(()),
                _ => Err(r.nodes_seen()),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn drill_object_store_down_for_30_seconds() {
    let mut d = Drill::new(None).await;
    d.submit(60, None);
    d.spawn_worker(&["--lease-secs", "2"], 100);
    d.until(Duration::from_secs(30), "some done", |rows| {
        rows.iter()
            .filter(|r| r.state == renderq::job::JobState::Succeeded)
            .count()
            >= 5
    })
    .await;
    d.s3.server.kill();
    tokio::time::sleep(Duration::from_secs(2)).await; // completions already in flight land
    let during = d
        .rows()
        .await
        .iter()
        .filter(|r| r.state == renderq::job::JobState::Succeeded)
        .count();
    tokio::time::sleep(Duration::from_secs(28)).await;
    let after = d
        .rows()
        .await
        .iter()
        .filter(|r| r.state == renderq::job::JobState::Succeeded)
        .count();
    assert_eq!(during, after, "no job succeeded while the store was down");
    d.s3.server.up().await;
    let (lost, dup) = d.verify(60, true).await;
    d.stop_workers().await;
    eprintln!(
        "DRILL object store down 30 s: lost {lost}, duplicate successes {dup}, succeeded while down 0"
    );
}

#[tokio::test]
async fn drill_sigterm_during_work() {
    let mut d = Drill::new(None).await;
    d.submit(40, None);
    let w = d.spawn_worker(&[], 300);
    d.until(Duration::from_secs(30), "work started", |rows| {
        rows.iter()
            .any(|r| r.state == renderq::job::JobState::Running)
    })
    .await;
    d.signal(&w, "TERM");
    let (_, mut child) = d.workers.remove(0);
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let drained_in = started.elapsed();
    assert!(
        d.rows()
            .await
            .iter()
            .all(|r| r.state != renderq::job::JobState::Running),
        "nothing left running"
    );
    d.spawn_worker(&[], 0);
    let (lost, dup) = d.verify(40, true).await;
    d.stop_workers().await;
    eprintln!(
        "DRILL SIGTERM during work: exit 0 after {drained_in:?}, lost {lost}, duplicate successes {dup}"
    );
}

#[tokio::test]
async fn drill_a_poison_job_fails_alone() {
    let mut d = Drill::new(None).await;
    d.submit(30, Some(7));
    d.spawn_worker(&["--backoff-secs", "0.05"], 20);
    d.until(Duration::from_secs(60), "all finished", |rows| {
        rows.len() == 30 && rows.iter().all(|r| r.state.is_terminal())
    })
    .await;
    let rows = d.rows().await;
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| r.state == renderq::job::JobState::Failed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0].prompt.contains("POISON") && failed[0].attempt == 3,
        "{failed:?}"
    );
    assert!(
        failed[0]
            .error
            .as_deref()
            .unwrap()
            .contains("poison prompt")
    );
    assert!(
        d.workers[0].1.try_wait().unwrap().is_none(),
        "the worker keeps serving"
    );
    d.stop_workers().await;
    eprintln!("DRILL poison job: 1 failed after 3 attempts, 29 succeeded, worker alive");
}

#[tokio::test]
async fn drill_postgres_restart_mid_batch() {
    let pg = PrivatePg::start();
    let mut d = Drill::new(Some(pg.url())).await;
    d.submit(80, None);
    d.spawn_worker(&["--lease-secs", "2"], 100);
    d.spawn_worker(&["--lease-secs", "2"], 100);
    d.until(Duration::from_secs(30), "some done", |rows| {
        rows.iter()
            .filter(|r| r.state == renderq::job::JobState::Succeeded)
            .count()
            >= 10
    })
    .await;
    pg.pg_ctl("restart");
    // Events sent while the listener reconnects are lost, so they are not counted here;
    // the row and object checks still hold.
    let (lost, dup) = d.verify(80, false).await;
    d.stop_workers().await;
    eprintln!("DRILL Postgres restart mid-batch: lost {lost}, duplicate successes {dup}");
}

/// How a dead worker's job is rescued in `drill_a_job_that_kills_every_worker_fails`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RescuePath {
    /// Another worker takes the Redis entry over (XAUTOCLAIM after the lease).
    RedisTakeover,
    /// Redis lost the entry too: the reconciler finds the dead worker's running job.
    Reconciler,
    /// Database dispatch: another worker takes the row's expired lease over.
    DatabaseLease,
}

/// A job that kills each worker it runs on (kill -9 while it renders) ends `failed`
/// after `max_attempts` deaths, saying its worker died, and its batch finishes.
async fn a_job_that_kills_every_worker_fails(path: RescuePath) {
    let mut d = Drill::new(None).await;
    d.use_redis = path != RescuePath::DatabaseLease;
    d.submit_with(1, None, 2);
    let lease = ["--lease-secs", "2"];
    for attempt in 1..=2 {
        // Renders for ten minutes: it holds the job until it is killed.
        let victim = d.spawn_worker(&lease, 600_000);
        d.until(Duration::from_secs(30), "the victim runs the job", |rows| {
            rows[0].worker.as_deref() == Some(victim.as_str())
                && rows[0].state == renderq::job::JobState::Running
                && rows[0].attempt == attempt
        })
        .await;
        d.signal(&victim, "KILL");
        if path == RescuePath::Reconciler {
            sh(
                "redis-cli",
                &["-p", &d.redis.0.port.to_string(), "FLUSHALL"],
            );
        }
    }
    d.spawn_worker(&lease, 0);
    d.until(Duration::from_secs(60), "the job failed", |rows| {
        rows[0].state.is_terminal()
    })
    .await;
    let row = d.rows().await.remove(0);
    d.stop_workers().await;
    assert_eq!(
        row.state,
        renderq::job::JobState::Failed,
        "{path:?}: {row:?}"
    );
    assert_eq!(row.attempt, 2, "{path:?}: no third attempt");
    let error = row.error.unwrap_or_default();
    assert!(
        error.contains("worker stopped responding") && error.contains("attempt 2 of 2"),
        "{path:?}: {error}"
    );
    let batch = row.batch_id.unwrap();
    assert!(
        d.record.batch_finished_at(batch).await.unwrap().is_some(),
        "{path:?}: the batch is finished"
    );
}

#[tokio::test]
async fn drill_a_job_that_kills_every_worker_fails_after_redis_takeovers() {
    a_job_that_kills_every_worker_fails(RescuePath::RedisTakeover).await;
}

#[tokio::test]
async fn drill_a_job_that_kills_every_worker_fails_after_reconciler_rescues() {
    a_job_that_kills_every_worker_fails(RescuePath::Reconciler).await;
}

#[tokio::test]
async fn drill_a_job_that_kills_every_worker_fails_after_database_lease_takeovers() {
    a_job_that_kills_every_worker_fails(RescuePath::DatabaseLease).await;
}
