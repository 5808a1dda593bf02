//! `--listen`: real `renderq worker` processes scraped over HTTP. The metrics must
//! agree with the record, `/readyz` must follow Redis and Postgres going away and
//! coming back (and refuse while draining), and `/livez` must name a wedged loop.

mod common;

use std::{
    net::TcpListener,
    time::{Duration, Instant},
};

use common::drill::*;
use renderq::job::JobState;

/// GETs `url`: its status and body, or status 0 when nothing answers.
async fn get(url: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    match client.get(url).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// Waits until `url` answers `status`; returns the body.
async fn until_status(url: &str, status: u16, within: Duration) -> String {
    let end = Instant::now() + within;
    loop {
        let (got, body) = get(url).await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < end,
            "{url} did not answer {status} within {within:?}: {got} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum of every series of metric `name` whose labels contain each of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().unwrap())
        })
        .sum()
}

fn listen_args(port: u16) -> Vec<String> {
    vec!["--listen".into(), format!("127.0.0.1:{port}")]
}

#[tokio::test]
async fn the_metrics_agree_with_the_record_after_a_run() {
    let mut d = Drill::new(None).await;
    // One poison job: it panics on each of its two attempts, so it is retried once
    // and then fails; the other 29 succeed.
    d.submit_with(30, Some(7), 2);
    let port = free_port();
    let args = listen_args(port);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    d.spawn_worker(&args, 0);
    let base = format!("http://127.0.0.1:{port}");
    d.until(Duration::from_secs(60), "all jobs finished", |rows| {
        rows.len() == 30 && rows.iter().all(|r| r.state.is_terminal())
    })
    .await;
    let rows = d.rows().await;
    let succeeded = rows
        .iter()
        .filter(|r| r.state == JobState::Succeeded)
        .count();
    let failed = rows.iter().filter(|r| r.state == JobState::Failed).count();
    let attempts: i64 = rows.iter().map(|r| r.attempt as i64).sum();
    assert_eq!((succeeded, failed), (29, 1));
    let q = format!("queue=\"{}\"", d.queue);
    // The backlog gauge comes from the reconciler's leader after a round: wait for a
    // round that saw the queue empty.
    let end = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (status, text) = get(&format!("{base}/metrics")).await;
        assert_eq!(status, 200);
        let published = ["queued", "running", "retrying"].iter().all(|state| {
            text.contains(&format!("renderq_queue_jobs{{{q},state=\"{state}\"}} 0\n"))
        });
        let recorded = metric(&text, "renderq_jobs_finished_total", &[&q]) as i64 == attempts;
        if published && recorded {
            break text;
        }
        assert!(Instant::now() < end, "metrics never caught up:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let finished = |outcome: &str| {
        metric(
            &text,
            "renderq_jobs_finished_total",
            &[&q, &format!("outcome=\"{outcome}\"")],
        ) as i64
    };
    assert_eq!(finished("succeeded"), succeeded as i64, "{text}");
    assert_eq!(finished("failed"), failed as i64, "{text}");
    assert_eq!(
        finished("retried"),
        attempts - (succeeded + failed) as i64,
        "every attempt before the last was retried"
    );
    assert_eq!(
        metric(&text, "renderq_jobs_claimed_total", &[&q, "model=\"noop\""]) as i64,
        attempts,
        "one claim per attempt the record counts"
    );
    assert_eq!(
        metric(&text, "renderq_claim_wait_seconds_count", &[&q]) as usize,
        rows.len(),
        "one submit-to-claim wait per job"
    );
    assert_eq!(metric(&text, "renderq_jobs_in_flight", &[&q]), 0.0);
    // Two batches of 2 for its one lane, which is also the cap (--concurrency 4).
    assert_eq!(metric(&text, "renderq_claim_target", &[&q]), 4.0);
    assert!(
        metric(
            &text,
            "renderq_device_call_seconds_count",
            &["model=\"noop\""]
        ) >= 1.0
    );
    assert!(metric(&text, "renderq_device_call_jobs_sum", &["model=\"noop\""]) >= attempts as f64);
    assert!(
        metric(
            &text,
            "renderq_device_busy_seconds_total",
            &["model=\"noop\""]
        ) > 0.0
    );
    assert_eq!(
        metric(&text, "renderq_encode_seconds_count", &[]) as usize,
        succeeded,
        "one encode per image"
    );
    assert!(metric(&text, "renderq_upload_seconds_count", &[]) >= 1.0);
    // No job id or prompt is ever a label.
    for r in &rows {
        assert!(!text.contains(&r.id.to_string()));
    }
    assert!(!text.contains("POISON"));
    d.stop_workers().await;
}

/// Attempts cut short by a cancel are counted `cancelled`: as many as the record has
/// cancelled jobs that a worker had claimed.
#[tokio::test]
async fn cancelled_attempts_are_counted_as_the_record_has_them() {
    let mut d = Drill::new(None).await;
    d.submit(12, None);
    let port = free_port();
    let args = listen_args(port);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Four jobs in flight, two per call, 800 ms a call: the cancel finds some running.
    d.spawn_worker(&args, 800);
    d.until(Duration::from_secs(30), "jobs running", |rows| {
        rows.iter().any(|r| r.state == JobState::Running)
    })
    .await;
    let batch = d.rows().await[0].batch_id.unwrap().to_string();
    assert!(d.command(&["cancel", &batch]).status().unwrap().success());
    d.until(Duration::from_secs(30), "all finished", |rows| {
        rows.iter().all(|r| r.state.is_terminal())
    })
    .await;
    let rows = d.rows().await;
    let claimed_then_cancelled = rows
        .iter()
        .filter(|r| r.state == JobState::Cancelled && r.attempt >= 1)
        .count();
    assert!(
        claimed_then_cancelled > 0,
        "the cancel caught running jobs: {rows:?}"
    );
    let q = format!("queue=\"{}\"", d.queue);
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, text) = get(&format!("http://127.0.0.1:{port}/metrics")).await;
        let cancelled = metric(
            &text,
            "renderq_jobs_finished_total",
            &[&q, "outcome=\"cancelled\""],
        );
        if cancelled as usize == claimed_then_cancelled {
            break;
        }
        assert!(
            Instant::now() < end,
            "cancelled {cancelled}, the record {claimed_then_cancelled}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.stop_workers().await;
}

#[tokio::test]
async fn readiness_follows_redis_and_postgres_and_refuses_while_draining() {
    let pg = PrivatePg::start();
    let mut d = Drill::new(Some(pg.url())).await;
    let port = free_port();
    let mut args = listen_args(port);
    args.extend(["--shutdown-secs".into(), "20".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let worker = d.spawn_worker(&args, 3000);
    let ready = format!("http://127.0.0.1:{port}/readyz");
    let live = format!("http://127.0.0.1:{port}/livez");
    let wait = Duration::from_secs(30);
    until_status(&ready, 200, wait).await;

    d.redis.0.kill();
    let body = until_status(&ready, 503, wait).await;
    assert!(body.contains("\"dispatch\""), "{body}");
    assert!(
        !body.contains("\"record\""),
        "only what is down is named: {body}"
    );
    d.redis.0.up().await;
    until_status(&ready, 200, wait).await;

    pg.pg_ctl("stop");
    let body = until_status(&ready, 503, wait).await;
    assert!(body.contains("\"record\""), "{body}");
    let (status, body) = get(&live).await;
    assert_eq!(
        status, 200,
        "a database outage is not a reason to restart: {body}"
    );
    pg.pg_ctl("start");
    until_status(&ready, 200, wait).await;

    // Jobs that take 3 s each keep the worker draining after SIGTERM.
    d.submit(4, None);
    d.until(wait, "jobs running", |rows| {
        rows.iter().any(|r| r.state == JobState::Running)
    })
    .await;
    d.signal(&worker, "TERM");
    let body = until_status(&ready, 503, Duration::from_secs(5)).await;
    assert!(body.contains("draining"), "{body}");
    d.stop_workers().await;
}

#[tokio::test]
async fn liveness_names_a_wedged_loop() {
    // An endpoint that accepts connections and never answers: the render loop's
    // device call hangs.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}/v1", silent.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for c in silent.incoming().take(8) {
            open.push(c);
        }
    });
    let mut d = Drill::new(None).await;
    let port = free_port();
    let mut args = listen_args(port);
    args.extend(
        [
            "--stall-secs",
            "1",
            "--shutdown-secs",
            "2",
            "--remote-url",
            &endpoint,
            "--remote-timeout-secs",
            "120",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    d.spawn_worker(&args, 0);
    let live = format!("http://127.0.0.1:{port}/livez");
    let wait = Duration::from_secs(30);
    let body = until_status(&live, 200, wait).await;
    assert!(body.contains("\"ok\""), "{body}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.jsonl");
    std::fs::write(
        &file,
        r#"{"prompt":"a","model":"remote/m","width":64,"height":64}"#,
    )
    .unwrap();
    assert!(
        d.command(&["submit"])
            .arg(&file)
            .status()
            .unwrap()
            .success()
    );
    let body = until_status(&live, 503, wait).await;
    assert!(
        body.contains("\"render\""),
        "the stuck loop is named: {body}"
    );
    assert!(body.contains("no progress"), "{body}");
    d.stop_workers().await;
    drop(held);
}
