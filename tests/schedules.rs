//! Cron schedules: one batch per firing however many schedulers run, catch-up of the
//! latest missed firing only, files read at each firing (local or s3://).

mod common;

use std::{process::Command, time::Duration};

use chrono::{Timelike, Utc};
use common::*;
use renderq::{input::SubmitOptions, schedule::Schedule, scheduler};

fn jobs_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("nightly.jsonl");
    std::fs::write(&path, "{\"prompt\":\"a\",\"width\":8,\"height\":8}\n{\"prompt\":\"b\",\"width\":8,\"height\":8}\n").unwrap();
    path.display().to_string()
}

fn every(name: &str, cron: &str, file: String, env: &Env) -> Schedule {
    Schedule {
        name: name.into(),
        cron: cron.into(),
        timezone: "UTC".into(),
        file,
        queue: env.queue.clone(),
        options: SubmitOptions {
            variants: 1,
            max_attempts: 3,
            ..Default::default()
        },
        last_fired_for: None,
        created_at: Utc::now(),
    }
}

async fn racing_schedulers_make_one_batch_per_firing(env: Env) {
    let dir = tempfile::tempdir().unwrap();
    let s = every("nightly", "* * * * * *", jobs_file(&dir), &env);
    assert!(env.record.add_schedule(&s).await.unwrap());
    assert!(
        !env.record.add_schedule(&s).await.unwrap(),
        "names are unique"
    );
    let stored = env.record.schedules().await.unwrap().remove(0);
    // Two schedulers see the same firing at once.
    let now = Utc::now() + chrono::Duration::seconds(2);
    let (a, b) = tokio::join!(
        scheduler::tick(env.record.as_ref(), env.dispatch.as_ref(), now),
        scheduler::tick(env.record.as_ref(), env.dispatch.as_ref(), now),
    );
    a.unwrap();
    b.unwrap();
    let batches = env.record.recent_batches(10).await.unwrap();
    assert_eq!(
        batches.len(),
        1,
        "{:?}",
        batches.iter().map(|b| &b.name).collect::<Vec<_>>()
    );
    assert_eq!(batches[0].total, 2);
    let fired = now.with_nanosecond(0).unwrap();
    assert_eq!(
        batches[0].name,
        format!("nightly@{}", fired.format("%Y-%m-%dT%H:%M:%SZ"))
    );
    assert_eq!(
        env.dispatch.backlog().await.unwrap(),
        2,
        "its jobs were dispatched once"
    );
    // Firing the same time again (a third scheduler, late) changes nothing.
    scheduler::fire(env.record.as_ref(), env.dispatch.as_ref(), &stored, fired)
        .await
        .unwrap();
    assert_eq!(env.record.recent_batches(10).await.unwrap().len(), 1);
    assert_eq!(env.rows().await.len(), 2);
}

async fn a_scheduler_that_was_down_fires_only_the_latest_missed_time(env: Env) {
    let dir = tempfile::tempdir().unwrap();
    let s = every("hourly", "0 * * * *", jobs_file(&dir), &env);
    env.record.add_schedule(&s).await.unwrap();
    let now = Utc::now();
    let hour = now
        .with_minute(0)
        .unwrap()
        .with_second(0)
        .unwrap()
        .with_nanosecond(0)
        .unwrap();
    env.record
        .mark_fired("hourly", hour - chrono::Duration::hours(3))
        .await
        .unwrap();
    scheduler::tick(env.record.as_ref(), env.dispatch.as_ref(), now)
        .await
        .unwrap();
    scheduler::tick(env.record.as_ref(), env.dispatch.as_ref(), now)
        .await
        .unwrap();
    let batches = env.record.recent_batches(10).await.unwrap();
    assert_eq!(
        batches.len(),
        1,
        "only the latest missed firing: {batches:?}"
    );
    assert_eq!(
        batches[0].name,
        format!("hourly@{}", hour.format("%Y-%m-%dT%H:%M:%SZ"))
    );
    let s = env.record.schedules().await.unwrap().remove(0);
    assert_eq!(s.last_fired_for, Some(hour));
}

conformance!(
    racing_schedulers_make_one_batch_per_firing,
    a_scheduler_that_was_down_fires_only_the_latest_missed_time
);

/// A manifest in S3 is read within the submit limit: a larger object is refused with
/// its size named, and never read whole.
#[tokio::test]
async fn an_s3_manifest_over_the_limit_is_refused() {
    let store = s3_store().await;
    let line = "{\"prompt\":\"from s3\",\"width\":8,\"height\":8}\n";
    store
        .client()
        .put_object()
        .bucket(store.bucket())
        .key("manifests/big.jsonl")
        .body(line.repeat(100).into_bytes().into())
        .send()
        .await
        .unwrap();
    let err = scheduler::download_manifest(store.as_ref(), "manifests/big.jsonl", 1024)
        .await
        .unwrap_err();
    assert!(err.contains("over the limit of 1024 bytes"), "{err}");
    let fits = scheduler::download_manifest(store.as_ref(), "manifests/big.jsonl", 1 << 20)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(fits.path()).unwrap(),
        line.repeat(100)
    );
}

#[tokio::test]
async fn schedules_from_the_command_line_fire_from_s3_in_the_scheduler() {
    let env = Env::new().await;
    let store = s3_store().await;
    store
        .client()
        .put_object()
        .bucket(store.bucket())
        .key("manifests/nightly.jsonl")
        .body(
            b"{\"prompt\":\"from s3\",\"width\":8,\"height\":8}\n"
                .to_vec()
                .into(),
        )
        .send()
        .await
        .unwrap();
    let s3 = s3_vars();
    let renderq = || {
        let mut c = env.renderq();
        c.envs(s3.iter().map(|(k, v)| (*k, v.as_str())));
        c
    };
    let dir = tempfile::tempdir().unwrap();
    let bad = renderq()
        .args(["schedule", "add", "x", "--cron", "0 2 * *"])
        .arg(jobs_file(&dir))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("4 fields"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let bad = renderq()
        .args([
            "schedule",
            "add",
            "x",
            "--cron",
            "0 2 * * *",
            "--tz",
            "Mars/Base",
        ])
        .arg(jobs_file(&dir))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a time zone"));
    std::fs::write(dir.path().join("broken.jsonl"), "{\"prompt\":\"\"}\n").unwrap();
    let bad = renderq()
        .args(["schedule", "add", "x", "--cron", "0 2 * * *"])
        .arg(dir.path().join("broken.jsonl"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("line 1: field `prompt`"));

    let file = format!("s3://{}/manifests/nightly.jsonl", store.bucket());
    let ok = renderq()
        .args([
            "schedule",
            "add",
            "s3nightly",
            "--cron",
            "* * * * * *",
            &file,
        ])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let list = renderq().args(["schedule", "list"]).output().unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains("s3nightly"));
    let port = common::drill::free_port();
    let mut scheduler = renderq()
        .args(["scheduler", "--listen", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut fired: Vec<renderq::db::Progress> = Vec::new();
    for _ in 0..100 {
        fired = env.record.recent_batches(10).await.unwrap();
        if !fired.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The scheduler serves its health and counts its firings.
    let base = format!("http://127.0.0.1:{port}");
    for path in ["/livez", "/readyz"] {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
    let mut firings = 0.0;
    for _ in 0..50 {
        let text = reqwest::get(format!("{base}/metrics")).await.unwrap();
        let text = text.text().await.unwrap();
        firings = text
            .lines()
            .find_map(|l| l.strip_prefix("renderq_schedule_firings_total{outcome=\"fired\"} "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if firings >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(firings >= 1.0, "the firing is counted");
    Command::new("kill")
        .args(["-TERM", &scheduler.id().to_string()])
        .status()
        .unwrap();
    assert!(scheduler.wait().unwrap().success());
    assert!(!fired.is_empty(), "the scheduler fired");
    assert!(fired[0].name.starts_with("s3nightly@"));
    let rows = env.record.jobs_of_queue(&env.queue).await.unwrap();
    assert!(rows.iter().any(|r| r.prompt == "from s3"));
    let removed = renderq()
        .args(["schedule", "remove", "s3nightly"])
        .output()
        .unwrap();
    assert!(removed.status.success());
}

#[tokio::test]
async fn workers_with_scheduler_fire_each_time_once_and_render_it() {
    let env = Env::new().await;
    let dir = tempfile::tempdir().unwrap();
    let s = every("each-second", "* * * * * *", jobs_file(&dir), &env);
    env.record.add_schedule(&s).await.unwrap();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            env.renderq()
                .args(["worker", "--scheduler"])
                .env("RENDERQ_STORE", dir.path().join("out"))
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut batches = Vec::new();
    for _ in 0..100 {
        batches = env.record.recent_batches(50).await.unwrap();
        if batches.len() >= 3 && batches.iter().all(|b| b.done) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.record.remove_schedule("each-second").await.unwrap();
    for w in &workers {
        Command::new("kill")
            .args(["-TERM", &w.id().to_string()])
            .status()
            .unwrap();
    }
    for mut w in workers {
        assert!(w.wait().unwrap().success());
    }
    assert!(batches.len() >= 3, "{batches:?}");
    let names: std::collections::HashSet<_> = batches.iter().map(|b| b.name.clone()).collect();
    assert_eq!(names.len(), batches.len(), "one batch per firing");
    assert!(
        batches.iter().all(|b| b.total == 2),
        "each firing read the file"
    );
}
