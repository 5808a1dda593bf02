//! The stages after rendering: encode and upload in chunks, then record the
//! outcomes (fenced by attempt) and forget their deliveries.

use std::{collections::HashMap, sync::Arc, sync::atomic::Ordering, time::Duration};

use bytes::Bytes;
use futures::StreamExt;
use image::RgbImage;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{InFlight, Shared, backoff, intake::retry_db};
use crate::{
    db::{Outcome, Recorded},
    job::{JobId, JobState},
    render::encode,
    store::{ObjectMeta, PutRequest, StoreError, object_key},
};

use super::rendering::Rendered;
use crate::telemetry::{idle_current, metrics, tick_current};

/// Rendered images taken together for encoding and one `put_many`.
const FINISH_CHUNK: usize = 64;
/// Chunks encoded and uploaded at once.
const FINISH_CHUNKS: usize = 4;
/// Images at most this many pixels are encoded inline; larger ones on the blocking pool.
const INLINE_ENCODE_PIXELS: u32 = 128 * 128;

/// Encodes and uploads rendered images, in chunks, several chunks at a time.
pub(crate) async fn finish(
    s: Arc<Shared>,
    rx: mpsc::Receiver<Rendered>,
    tx: mpsc::Sender<(InFlight, Outcome)>,
) {
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        idle_current();
        let mut chunk = vec![rx.recv().await?];
        tick_current();
        while chunk.len() < FINISH_CHUNK {
            match rx.try_recv() {
                Ok(more) => chunk.push(more),
                Err(_) => break,
            }
        }
        Some((chunk, rx))
    });
    chunks
        .for_each_concurrent(FINISH_CHUNKS, |chunk| {
            let s = s.clone();
            let tx = tx.clone();
            async move {
                for done in finish_chunk(&s, chunk).await {
                    let _ = tx.send(done).await;
                }
            }
        })
        .await;
}

fn failed(s: &Shared, item: &InFlight, error: String, retry: bool) -> Outcome {
    Outcome::Failed {
        error,
        retry,
        backoff_ms: backoff(&s.cfg, item.job.attempt).as_millis() as i64,
    }
}

async fn finish_chunk(s: &Shared, chunk: Vec<Rendered>) -> Vec<(InFlight, Outcome)> {
    let mut done = Vec::with_capacity(chunk.len());
    let mut uploads = Vec::with_capacity(chunk.len());
    for (item, result) in chunk {
        match result {
            Err(e) => {
                let outcome = failed(s, &item, e.to_string(), e.is_retry());
                done.push((item, outcome));
            }
            Ok(image) => match encode_for(s.store.prefix(), &item, image).await {
                Ok(put) => uploads.push((item, put)),
                Err(e) => {
                    let outcome = failed(s, &item, e, false);
                    done.push((item, outcome));
                }
            },
        }
    }
    let puts: Vec<PutRequest> = uploads.iter().map(|(_, p)| p.clone()).collect();
    let started = std::time::Instant::now();
    let results = s.store.put_many(&puts).await;
    if !puts.is_empty() {
        metrics().uploaded(started.elapsed().as_secs_f64());
    }
    tick_current();
    for ((item, put), result) in uploads.into_iter().zip(results) {
        let outcome = match result {
            Ok(()) => Outcome::Stored { key: put.key },
            Err(e) if e.retry => retry_upload(s, &item, put, e).await,
            Err(e) => failed(s, &item, e.message, false),
        };
        done.push((item, outcome));
    }
    done
}

async fn encode_for(prefix: &str, item: &InFlight, image: RgbImage) -> Result<PutRequest, String> {
    let job = &item.job;
    let format = job.spec.format;
    let started = std::time::Instant::now();
    let encoded = if image.width() * image.height() <= INLINE_ENCODE_PIXELS {
        encode(&image, format).map_err(|e| e.to_string())
    } else {
        tokio::task::spawn_blocking(move || encode(&image, format).map_err(|e| e.to_string()))
            .await
            .unwrap_or_else(|e| Err(format!("encoder panicked: {e}")))
    };
    let body = encoded.map_err(|e| format!("encoding {format:?}: {e}"))?;
    metrics().encoded(started.elapsed().as_secs_f64());
    Ok(PutRequest {
        key: object_key(prefix, job),
        body: Bytes::from(body),
        meta: ObjectMeta {
            content_type: format.content_type(),
            seed: job.seed,
            model: job.spec.model.clone(),
            job_id: job.id.to_string(),
        },
    })
}

/// The store being down is not the job's fault: keep trying (the lease is kept alive
/// meanwhile) until the upload deadline, then fail the attempt.
async fn retry_upload(s: &Shared, item: &InFlight, put: PutRequest, first: StoreError) -> Outcome {
    let deadline = tokio::time::Instant::now() + s.cfg.upload_deadline;
    let mut wait = Duration::from_millis(200);
    let mut last = first;
    loop {
        if !last.retry || tokio::time::Instant::now() + wait >= deadline {
            return failed(s, item, last.message, last.retry);
        }
        warn!(job = %item.job.id, "upload failed (retrying in {wait:?}): {last}");
        tokio::time::sleep(wait).await;
        tick_current();
        wait = (wait * 2).min(Duration::from_secs(5));
        match s.store.put(&put.key, put.body.clone(), &put.meta).await {
            Ok(()) => return Outcome::Stored { key: put.key },
            Err(e) => last = e,
        }
    }
}

/// Most outcomes written in one statement.
const COMPLETE_CHUNK: usize = 1024;

/// Outcome chunks recorded at once, so that one chunk's acknowledgement and batch
/// check overlap the next chunk's statement.
const COMPLETIONS_AT_ONCE: usize = 2;

/// Records outcomes in batches (fenced by attempt), then forgets their deliveries.
pub(crate) async fn complete(s: Arc<Shared>, rx: mpsc::Receiver<(InFlight, Outcome)>) {
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        idle_current();
        let first = rx.recv().await?;
        tick_current();
        let mut batch = vec![first];
        while batch.len() < COMPLETE_CHUNK {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        Some((batch, rx))
    });
    chunks
        .for_each_concurrent(COMPLETIONS_AT_ONCE, |batch| complete_chunk(&s, batch))
        .await;
}

/// Records one chunk's outcomes; dropping the chunk returns its concurrency permits.
async fn complete_chunk(s: &Shared, batch: Vec<(InFlight, Outcome)>) {
    // Completions are written even while draining; only the drain deadline stops them.
    let never = CancellationToken::new();
    let queue = s.dispatch.queue();
    let rows: Vec<_> = batch
        .iter()
        .map(|(i, o)| (i.job.id, i.job.attempt, o.clone()))
        .collect();
    let Some(recorded) = retry_db(&never, || s.record.record_outcomes(&rows)).await else {
        return;
    };
    let mut ack = Vec::new();
    let mut stale = Vec::new();
    let mut done = 0;
    let mut touched = std::collections::HashSet::new();
    // Outcomes counted per (model, outcome) and added once per chunk.
    let mut counts: HashMap<(&str, &str), u64> = HashMap::new();
    for ((item, outcome), rec) in batch.iter().zip(&recorded) {
        let model = item.job.spec.model.as_str();
        match rec {
            Recorded::Moved(JobState::Retrying, run_at) => {
                *counts.entry((model, "retried")).or_default() += 1;
                // On database dispatch the row (`retrying`, `run_at`) is the wait.
                if let Some(set) = s.dispatch.delayed() {
                    let due = run_at.map(|t| t.timestamp_millis()).unwrap_or(0);
                    if let Err(e) = set.defer(&item.entry, item.job.id, due).await {
                        // The delivery stays pending; after its lease it is taken over.
                        warn!(job = %item.job.id, "could not schedule the retry: {e}");
                    }
                }
            }
            Recorded::Moved(state, _) => {
                *counts.entry((model, state.as_str())).or_default() += 1;
                done += 1;
                touched.extend(item.job.batch_id);
                ack.push(item.entry.clone());
                if let Outcome::Failed { error, .. } = outcome {
                    warn!(job = %item.job.id, attempt = item.job.attempt, "job {state}: {error}");
                }
            }
            Recorded::Stale => stale.push(item.job.id),
        }
    }
    if !stale.is_empty() {
        // Cancelled or finished meanwhile: forget the delivery. Taken over by a
        // live worker: leave it to that worker.
        debug!(n = stale.len(), "stale attempts discarded");
        let states = s.record.states(&stale).await;
        let by_id: HashMap<JobId, &InFlight> = batch.iter().map(|(i, _)| (i.job.id, i)).collect();
        let known: HashMap<JobId, JobState> = match &states {
            Ok(all) => all.iter().map(|(id, st, _)| (*id, *st)).collect(),
            Err(_) => HashMap::new(),
        };
        for id in &stale {
            let outcome = match known.get(id) {
                Some(JobState::Cancelled) => "cancelled",
                _ => "stale",
            };
            let model = by_id
                .get(id)
                .map_or("unknown", |i| i.job.spec.model.as_str());
            *counts.entry((model, outcome)).or_default() += 1;
            if let Some(item) = by_id.get(id)
                && known.get(id).is_some_and(|st| st.is_terminal())
            {
                ack.push(item.entry.clone());
            }
        }
    }
    for ((model, outcome), n) in counts {
        metrics().finished(queue, model, outcome, n);
    }
    if let Err(e) = s.dispatch.ack(&ack).await {
        warn!("acknowledging {} deliveries failed: {e}", ack.len());
    }
    super::finish_batches(s, touched.into_iter().collect()).await;
    {
        let mut in_flight = s.in_flight.lock().unwrap();
        for (item, _) in &batch {
            in_flight.remove(&item.entry);
        }
        s.count_in_flight(in_flight.len());
    }
    s.jobs_done.fetch_add(done, Ordering::Relaxed);
}
