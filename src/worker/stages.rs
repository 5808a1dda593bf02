//! The pipeline stages after intake, and the worker's background tasks.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use bytes::Bytes;
use futures::StreamExt;
use image::RgbImage;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{InFlight, Shared, backoff, intake::retry_db};
use crate::{
    db::{Outcome, Recorded},
    job::JobState,
    render::{BatchKey, RenderError, RenderRequest, encode},
    store::{ObjectMeta, PutRequest, StoreError, object_key},
};

type Rendered = (InFlight, Result<RgbImage, RenderError>);

/// Renders claimed jobs, grouping those that can share a device call.
pub(crate) async fn render(
    s: Arc<Shared>,
    mut rx: mpsc::Receiver<InFlight>,
    tx: mpsc::Sender<Rendered>,
) {
    let max_batch = s.cfg.max_batch.max(1);
    while let Some(first) = rx.recv().await {
        let mut pending = vec![first];
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
            if pending.len() >= s.cfg.concurrency {
                break;
            }
        }
        let mut groups: Vec<(BatchKey, Vec<InFlight>)> = Vec::new();
        for item in pending {
            let key = RenderRequest::from_job(&item.job).batch_key();
            match groups
                .iter_mut()
                .find(|(k, g)| *k == key && g.len() < max_batch)
            {
                Some((_, g)) => g.push(item),
                None => groups.push((key, vec![item])),
            }
        }
        for (key, group) in groups {
            let results = render_group(&s, &key.model, &group).await;
            for (item, result) in group.into_iter().zip(results) {
                if tx.send((item, result)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// One device call. A panic is contained: a batch that panics is rendered again one
/// job at a time, so only the job that causes it fails.
async fn render_group(
    s: &Shared,
    model: &str,
    group: &[InFlight],
) -> Vec<Result<RgbImage, RenderError>> {
    let Some(renderer) = s.renderers.get(model) else {
        let err = s.renderers.unknown_model(model);
        return group.iter().map(|_| Err(err.clone())).collect();
    };
    // Jobs cancelled (or taken over) while they waited for the device are not
    // rendered: their device time goes to live jobs. Only a wait of a second or more
    // is worth the query; a fresher job's outcome is still fenced out if cancelled.
    let waited = group
        .iter()
        .any(|i| i.claimed_at.elapsed() >= RECHECK_AFTER);
    let live = if waited {
        still_ours(s, group).await
    } else {
        vec![true; group.len()]
    };
    let requests: Vec<RenderRequest> = group
        .iter()
        .zip(&live)
        .filter(|(_, live)| **live)
        .map(|(i, _)| RenderRequest::from_job(&i.job))
        .collect();
    if requests.len() < group.len() {
        let mut rendered = render_requests(renderer, requests, model).await.into_iter();
        return live
            .iter()
            .map(|live| match live {
                true => rendered
                    .next()
                    .unwrap_or_else(|| Err(RenderError::Retry("missing result".into()))),
                false => Err(RenderError::Abort("cancelled before rendering".into())),
            })
            .collect();
    }
    render_requests(renderer, requests, model).await
}

/// A job that waited this long since its claim is checked before it renders.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// Whether each job is still running under the attempt this worker claimed.
/// On a database error all are assumed live (the completion fence still holds).
async fn still_ours(s: &Shared, group: &[InFlight]) -> Vec<bool> {
    let ids: Vec<_> = group.iter().map(|i| i.job.id).collect();
    match s.record.states(&ids).await {
        Ok(states) => group
            .iter()
            .map(|i| {
                states.iter().any(|(id, st, attempt)| {
                    *id == i.job.id && *st == JobState::Running && *attempt == i.job.attempt
                })
            })
            .collect(),
        Err(_) => vec![true; group.len()],
    }
}

/// Renders one device call. A panic, or a result count that does not match the
/// requests, renders the batch again one job at a time: only the job that causes it
/// fails, and the rest of the batch succeeds.
async fn render_requests(
    renderer: std::sync::Arc<dyn crate::render::Renderer>,
    requests: Vec<RenderRequest>,
    model: &str,
) -> Vec<Result<RgbImage, RenderError>> {
    if requests.is_empty() {
        return Vec::new();
    }
    let call = |reqs: Vec<RenderRequest>| {
        let r = renderer.clone();
        async move {
            let n = reqs.len();
            // Its own task: a panic ends that task, not this stage.
            match tokio::spawn(async move { r.render(&reqs).await }).await {
                Ok(out) if out.len() == n => Ok(out),
                Ok(out) => Err(format!(
                    "renderer returned {} images for {n} requests",
                    out.len()
                )),
                Err(e) => Err(panic_message(e)),
            }
        }
    };
    match call(requests.clone()).await {
        Ok(results) => results,
        Err(e) if requests.len() > 1 => {
            warn!(
                model,
                "{e} on a batch of {}; rendering it one job at a time",
                requests.len()
            );
            let mut out = Vec::with_capacity(requests.len());
            for req in requests {
                out.push(match call(vec![req]).await {
                    Ok(mut r) => r.remove(0),
                    Err(e) => Err(RenderError::Retry(e)),
                });
            }
            out
        }
        Err(e) => vec![Err(RenderError::Retry(e))],
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    let msg = match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into()),
        Err(e) => e.to_string(),
    };
    format!("renderer panicked: {msg}")
}

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
        let mut chunk = vec![rx.recv().await?];
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
    let results = s.store.put_many(&puts).await;
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
    let encoded = if image.width() * image.height() <= INLINE_ENCODE_PIXELS {
        encode(&image, format).map_err(|e| e.to_string())
    } else {
        tokio::task::spawn_blocking(move || encode(&image, format).map_err(|e| e.to_string()))
            .await
            .unwrap_or_else(|e| Err(format!("encoder panicked: {e}")))
    };
    let body = encoded.map_err(|e| format!("encoding {format:?}: {e}"))?;
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
        wait = (wait * 2).min(Duration::from_secs(5));
        match s.store.put(&put.key, put.body.clone(), &put.meta).await {
            Ok(()) => return Outcome::Stored { key: put.key },
            Err(e) => last = e,
        }
    }
}

/// Most outcomes written in one statement.
const COMPLETE_CHUNK: usize = 1024;

/// Records outcomes in batches (fenced by attempt), then forgets their deliveries.
pub(crate) async fn complete(s: Arc<Shared>, mut rx: mpsc::Receiver<(InFlight, Outcome)>) {
    // Completions are written even while draining; only the drain deadline stops them.
    let never = CancellationToken::new();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < COMPLETE_CHUNK {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let rows: Vec<_> = batch
            .iter()
            .map(|(i, o)| (i.job.id, i.job.attempt, o.clone()))
            .collect();
        let Some(recorded) = retry_db(&never, || s.record.record_outcomes(&rows)).await else {
            continue;
        };
        let mut ack = Vec::new();
        let mut stale = Vec::new();
        let mut done = 0;
        let mut touched = std::collections::HashSet::new();
        for ((item, outcome), rec) in batch.iter().zip(&recorded) {
            match rec {
                Recorded::Moved(JobState::Retrying, run_at) => {
                    let due = run_at.map(|t| t.timestamp_millis()).unwrap_or(0);
                    if let Err(e) = s.dispatch.defer(&item.entry, item.job.id, due).await {
                        // The delivery stays pending; after its lease it is taken over.
                        warn!(job = %item.job.id, "could not schedule the retry: {e}");
                    }
                }
                Recorded::Moved(state, _) => {
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
            if let Ok(states) = s.record.states(&stale).await {
                for (id, state, _) in states {
                    if state.is_terminal()
                        && let Some((item, _)) = batch.iter().find(|(i, _)| i.job.id == id)
                    {
                        ack.push(item.entry.clone());
                    }
                }
            }
        }
        if let Err(e) = s.dispatch.ack(&ack).await {
            warn!("acknowledging {} deliveries failed: {e}", ack.len());
        }
        super::finish_batches(&s, touched.into_iter().collect()).await;
        {
            let mut in_flight = s.in_flight.lock().unwrap();
            for (item, _) in &batch {
                in_flight.remove(&item.entry);
            }
        }
        s.jobs_done.fetch_add(done, Ordering::Relaxed);
        // Dropping `batch` returns the concurrency permits.
    }
}

/// Keeps this worker's leases alive and its row in `renderq.workers` fresh.
pub(crate) async fn heartbeat(s: Arc<Shared>, stop: CancellationToken) {
    let every = (s.cfg.lease / 3).max(Duration::from_millis(50));
    let info = super::info(&s);
    loop {
        let entries: Vec<String> = s.in_flight.lock().unwrap().keys().cloned().collect();
        match s.dispatch.heartbeat(&s.cfg.id, &entries).await {
            Ok(lost) if !lost.is_empty() => warn!(
                n = lost.len(),
                "leases lost to another worker (this worker stalled); their results will be discarded"
            ),
            Ok(_) => {}
            Err(e) => warn!("renewing leases failed: {e}"),
        }
        let done = s.jobs_done.load(Ordering::Relaxed) as i64;
        if let Err(e) = s.record.worker_heartbeat(&info, done).await {
            debug!("worker heartbeat not recorded: {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Moves retries whose backoff is over from the delayed set back to the queue.
pub(crate) async fn move_due_retries(s: Arc<Shared>, stop: CancellationToken) {
    let every = Duration::from_millis(250).min(s.cfg.backoff_base.max(Duration::from_millis(20)));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let now = chrono::Utc::now().timestamp_millis();
        let due = match s.dispatch.due(now, 500).await {
            Ok(d) if d.is_empty() => continue,
            Ok(d) => d,
            Err(e) => {
                debug!("reading due retries failed: {e}");
                continue;
            }
        };
        let queued = match s.record.requeue_due(&due).await {
            Ok(q) => q,
            Err(e) => {
                debug!("requeueing due retries failed: {e}");
                continue;
            }
        };
        let gone: Vec<_> = due
            .iter()
            .filter(|id| !queued.contains(id))
            .copied()
            .collect();
        let moved = s.dispatch.move_due(&queued).await;
        let dropped = s.dispatch.drop_due(&gone).await;
        if let Err(e) = moved.and(dropped) {
            warn!("moving due retries failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::*;
    use crate::{
        job::JobId,
        render::{NoopRenderer, PanicOn, PlaceholderRenderer, Renderer},
    };

    fn request(prompt: &str) -> RenderRequest {
        RenderRequest {
            job_id: JobId::generate(),
            model: "m".into(),
            prompt: prompt.into(),
            negative_prompt: None,
            width: 16,
            height: 16,
            steps: None,
            guidance: None,
            seed: 7,
        }
    }

    fn batch() -> Vec<RenderRequest> {
        ["a", "POISON", "b"].map(request).to_vec()
    }

    #[tokio::test]
    async fn a_panic_in_a_built_in_renderer_fails_only_the_poison_job() {
        let poison = || PanicOn::new(Some("POISON".into()));
        let renderers: [Arc<dyn Renderer>; 2] = [
            Arc::new(PlaceholderRenderer::new().panicking_on(poison())),
            Arc::new(NoopRenderer::new(0).panicking_on(poison())),
        ];
        for renderer in renderers {
            let results = render_requests(renderer, batch(), "m").await;
            assert_eq!(results.len(), 3);
            assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
            match &results[1] {
                Err(RenderError::Retry(e)) => {
                    assert!(e.contains("renderer panicked: poison prompt"), "{e}")
                }
                other => panic!("expected a retryable panic error, got {other:?}"),
            }
        }
    }

    /// Returns one image, whatever the batch size.
    struct OneImage;
    #[async_trait]
    impl Renderer for OneImage {
        async fn render(&self, _: &[RenderRequest]) -> Vec<Result<RgbImage, RenderError>> {
            vec![Ok(RgbImage::new(1, 1))]
        }
    }

    #[tokio::test]
    async fn a_wrong_result_count_renders_the_batch_one_job_at_a_time() {
        let results = render_requests(Arc::new(OneImage), batch(), "m").await;
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
}
