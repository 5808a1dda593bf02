//! `renderq status`, `wait` and `cancel`: reading and steering the record.

use std::{io::IsTerminal, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::{Global, connect, parse_batch};
use crate::{
    db::{Progress, Record},
    job::BatchId,
    redact::webhook_origin,
    worker::WorkerConfig,
};

fn counts(p: &Progress) -> String {
    format!(
        "total {}  queued {}  running {}  succeeded {}  failed {}  cancelled {}{}",
        p.total,
        p.queued,
        p.running,
        p.succeeded,
        p.failed,
        p.cancelled,
        if p.done { "  (done)" } else { "" }
    )
}

pub async fn status(record: &dyn Record, queue: &str, batch: Option<String>) -> Result<ExitCode> {
    let Some(batch) = batch else {
        let batches = record.recent_batches(20).await?;
        if batches.is_empty() {
            println!("no batches yet");
        }
        for p in &batches {
            println!(
                "{}  {}  {}  {}",
                p.batch_id,
                p.created_at.format("%Y-%m-%d %H:%M:%S"),
                p.name,
                counts(p)
            );
        }
        let by_state = record.queue_counts(queue).await?;
        let line: Vec<String> = by_state.iter().map(|(s, n)| format!("{s} {n}")).collect();
        println!(
            "queue `{queue}`: {}",
            if line.is_empty() {
                "empty".into()
            } else {
                line.join("  ")
            }
        );
        return Ok(ExitCode::SUCCESS);
    };
    let id = parse_batch(&batch)?;
    let Some(p) = record.progress(id).await? else {
        eprintln!("error: no batch {id}");
        return Ok(ExitCode::from(2));
    };
    println!(
        "batch {} ({}), created {}",
        p.batch_id,
        p.name,
        p.created_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    println!("  {}", counts(&p));
    if let (Some(first), last) = record.batch_times(id).await? {
        let until = if p.done {
            last.unwrap_or_else(chrono::Utc::now)
        } else {
            chrono::Utc::now()
        };
        let secs = (until - first).num_milliseconds().max(1) as f64 / 1000.0;
        let rate = p.finished() as f64 / secs;
        let mut line = format!("  {rate:.1} jobs/s over {secs:.1} s");
        if !p.done && rate > 0.0 {
            let left = (p.total - p.finished()) as f64 / rate;
            line.push_str(&format!(", about {} left", human(left)));
        }
        println!("{line}");
    }
    if let Some(hook) = record.webhook(id).await? {
        let state = match (&hook.status, p.done) {
            (Some(status), _) => status.clone(),
            (None, true) => "due: a worker on the batch's queue sends it".into(),
            (None, false) => "sent when the batch finishes".into(),
        };
        println!("  webhook {}: {state}", webhook_origin(&hook.url));
    }
    if p.failed > 0 {
        println!("{}", failed_jobs(record, id).await?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Polls until the batch is done. A bar on a terminal; otherwise a line whenever the
/// counts change (at most every few seconds), which reads well in CI logs.
pub async fn wait(record: &dyn Record, batch: &str, every: Duration) -> Result<ExitCode> {
    let id = parse_batch(batch)?;
    let tty = std::io::stderr().is_terminal();
    let mut bar: Option<ProgressBar> = None;
    let mut last_line = String::new();
    let mut last_print = std::time::Instant::now() - Duration::from_secs(60);
    loop {
        let Some(p) = record.progress(id).await? else {
            eprintln!("error: no batch {id}");
            return Ok(ExitCode::from(2));
        };
        if tty {
            let b = bar.get_or_insert_with(|| {
                let b = ProgressBar::new(p.total as u64);
                b.set_style(
                    ProgressStyle::with_template(
                        "{bar:40} {pos}/{len} ({per_sec}, eta {eta}) {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b
            });
            b.set_position(p.finished() as u64);
            b.set_message(format!("failed {} cancelled {}", p.failed, p.cancelled));
        } else {
            let line = counts(&p);
            if line != last_line && (p.done || last_print.elapsed() >= Duration::from_secs(2)) {
                eprintln!("{id}: {line}");
                last_line = line;
                last_print = std::time::Instant::now();
            }
        }
        if p.done {
            if let Some(b) = bar {
                b.finish();
            }
            let ok = p.failed == 0 && p.cancelled == 0;
            println!(
                "{id}: {}",
                if ok {
                    "all succeeded".to_string()
                } else {
                    counts(&p)
                }
            );
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        tokio::time::sleep(every).await;
    }
}

pub async fn cancel(record: &dyn Record, id: &str) -> Result<ExitCode> {
    let uuid: uuid::Uuid = id
        .parse()
        .with_context(|| format!("`{id}` is not a job or batch id"))?;
    if !record.exists(uuid).await? {
        eprintln!("error: no job or batch {uuid}");
        return Ok(ExitCode::from(2));
    }
    let done = record.cancel(uuid).await?;
    println!("cancelled {} unfinished job(s) of {uuid}", done.jobs);
    // Cancelling a batch's last unfinished job ends the batch, whichever id was given.
    // Its `done` event goes out now; its webhook, if any, is sent by a worker.
    if let Some(batch) = done.batch
        && !record.finish_batches(&[batch]).await?.is_empty()
    {
        println!("batch {batch} finished");
    }
    Ok(ExitCode::SUCCESS)
}

/// The first 20 failed jobs of a batch with their errors, one per line under a heading.
pub async fn failed_jobs(record: &dyn Record, batch: BatchId) -> Result<String> {
    let mut text = String::from("failed jobs (first 20):");
    for f in record.failures(batch, 20).await? {
        let error = f.error.unwrap_or_default();
        text.push_str(&format!("\n  {}  attempt {}  {error}", f.id, f.attempt));
    }
    Ok(text)
}

fn human(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// Puts a batch's failed jobs back in the queue, each in its lane of its priority.
pub async fn retry(g: &Global, batch: &str, max_attempts: i32) -> Result<ExitCode> {
    let batch = parse_batch(batch)?;
    let (record, dispatch) = connect(g, WorkerConfig::default().lease).await?;
    let ids = record.retry_failed(batch, max_attempts.max(1)).await?;
    let placed = record.placement(&ids).await?;
    crate::dispatch::enqueue_placed(dispatch.as_ref(), &placed).await?;
    println!("re-queued {} failed job(s) of {batch}", ids.len());
    Ok(ExitCode::SUCCESS)
}
