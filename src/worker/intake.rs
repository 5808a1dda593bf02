//! Intake: takes deliveries (new ones, and ones whose lease ran out), turns raw
//! messages into rows, claims the jobs in the record in one statement per chunk, and
//! hands what it claimed to the render stage. Reading and claiming are two tasks, so
//! the next chunk is read from the queue while the last one is being claimed.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{InFlight, Shared, sizing::Held};
use crate::telemetry::{idle_current, metrics, tick_current, watched};
use crate::{
    db::{ClaimRequest, Outcome},
    dispatch::{Delivery, Payload},
    job::{BatchId, JobId, JobSpec},
};

/// Most deliveries taken in one read.
const READ_CHUNK: usize = 1024;
/// Longest wait of one read for work.
const BLOCK: Duration = Duration::from_millis(2000);

/// Deliveries read, with the concurrency permits that hold room for them.
type Chunk = (Vec<Delivery>, Vec<Held>);

pub(crate) async fn run(
    s: Arc<Shared>,
    permits: Arc<Semaphore>,
    out: mpsc::Sender<InFlight>,
    shutdown: CancellationToken,
) {
    // One chunk waits while others are claimed: enough to keep the claims busy.
    let (tx, rx) = mpsc::channel(1);
    let claimer = tokio::spawn(watched(
        s.health.watch("claim"),
        claim_chunks(s.clone(), rx, out, shutdown.clone()),
    ));
    watched(s.health.watch("intake"), read(s, permits, tx, shutdown)).await;
    // The reader has stopped; chunks it read are still claimed and handed on.
    let _ = claimer.await;
}

async fn read(
    s: Arc<Shared>,
    permits: Arc<Semaphore>,
    tx: mpsc::Sender<Chunk>,
    shutdown: CancellationToken,
) {
    let lease_ms = s.cfg.lease.as_millis() as u64;
    let reclaim_every = (s.cfg.lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    // A read waits this long for work (a new entry ends it at once): an idle worker
    // looks for lapsed leases after each, so a dead worker's jobs are taken over
    // within the lease and one such wait.
    let block = BLOCK.min(reclaim_every * 2);
    let mut next_reclaim = tokio::time::Instant::now();
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        // Wait for room before taking anything: a job is only read when it can be
        // held, and only as many as the lanes need (the sizer's target).
        idle_current();
        let room = tokio::select! {
            room = room_for_more(&s, &permits) => room,
            _ = shutdown.cancelled() => break,
        };
        tick_current();
        let mut held = Vec::with_capacity(room.min(READ_CHUNK));
        while held.len() < room.min(READ_CHUNK) {
            match permits.clone().try_acquire_owned() {
                Ok(p) => held.push(Held::new(p, s.sizer.clone())),
                Err(_) => break,
            }
        }
        if held.is_empty() {
            continue;
        }
        let takeover = tokio::time::Instant::now() >= next_reclaim;
        let read = if takeover {
            next_reclaim = tokio::time::Instant::now() + reclaim_every;
            let reclaimed = s.dispatch.reclaim(&s.cfg.id, lease_ms, held.len()).await;
            match reclaimed {
                Ok(d) if d.is_empty() => fetch(&s, held.len(), block).await,
                other => other,
            }
        } else {
            fetch(&s, held.len(), block).await
        };
        let deliveries = match read {
            Ok(d) => {
                failures = 0;
                d
            }
            Err(e) => {
                failures += 1;
                let wait = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                warn!("reading the queue failed (retrying in {wait:?}): {e}");
                tick_current();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        if deliveries.is_empty() {
            continue;
        }
        debug!(n = deliveries.len(), "delivered");
        if tx.send((deliveries, held)).await.is_err() {
            return;
        }
    }
}

/// Waits until the worker holds fewer jobs than its target; returns how many more
/// it may take.
async fn room_for_more(s: &Shared, permits: &Semaphore) -> usize {
    loop {
        // Registered before the check: a job let go in between still wakes us.
        let changed = s.sizer.changed.notified();
        let held = s.cfg.concurrency.max(1) - permits.available_permits();
        let target = s.sizer.target();
        metrics().claim_target(s.dispatch.queue(), target);
        let room = target.saturating_sub(held);
        if room > 0 {
            return room;
        }
        changed.await;
    }
}

/// Chunks claimed at once: while Postgres runs one claim, the worker sends the next
/// and hands on the last, so the record and the worker work side by side instead of
/// taking turns (a drain left a third of a 2-core machine idle with one at a time).
const CLAIMS_AT_ONCE: usize = 2;

async fn claim_chunks(
    s: Arc<Shared>,
    rx: mpsc::Receiver<Chunk>,
    out: mpsc::Sender<InFlight>,
    shutdown: CancellationToken,
) {
    let queue = s.dispatch.queue().to_string();
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        idle_current();
        let chunk = rx.recv().await?;
        tick_current();
        Some((chunk, rx))
    });
    // Once the render stage is gone, nothing more is claimed: a claimed job nobody
    // renders would sit `running` until its lease ran out.
    chunks
        .take_while(|_| std::future::ready(!out.is_closed()))
        .for_each_concurrent(CLAIMS_AT_ONCE, |(deliveries, held)| {
            let (s, out, shutdown, queue) = (&s, &out, &shutdown, &queue);
            async move {
                let claimed = claim(s, deliveries, shutdown).await;
                count_claims(queue, &claimed);
                let mut held = held.into_iter();
                for (job, entry) in claimed {
                    let Some(permit) = held.next() else { break };
                    let n = {
                        let mut in_flight = s.in_flight.lock().unwrap();
                        in_flight.insert(entry.clone(), (job.id, job.attempt));
                        in_flight.len()
                    };
                    s.count_in_flight(n);
                    let item = InFlight {
                        job,
                        entry,
                        claimed_at: tokio::time::Instant::now(),
                        _permit: permit,
                    };
                    if out.send(item).await.is_err() {
                        return;
                    }
                }
                // Permits left in `held` return to the semaphore here.
            }
        })
        .await;
}

/// Counts claims by model, and each first attempt's wait since its submit.
fn count_claims(queue: &str, claimed: &[(crate::job::ClaimedJob, String)]) {
    let mut by_model: std::collections::HashMap<&str, u64> = Default::default();
    let now = chrono::Utc::now();
    for (job, _) in claimed {
        *by_model.entry(job.spec.model.as_str()).or_default() += 1;
        if let (1, Some(at)) = (job.attempt, job.submitted_at) {
            let waited = (now - at).num_microseconds().unwrap_or(0).max(0);
            metrics().claim_wait(queue, waited as f64 / 1e6);
        }
    }
    for (model, n) in by_model {
        metrics().claimed(queue, model, n);
    }
}

/// Not cut short by shutdown: a read in flight may already have delivered entries to
/// this consumer, and those are then claimed and drained like the rest. `BLOCK` bounds
/// the wait.
async fn fetch(
    s: &Shared,
    count: usize,
    block: Duration,
) -> Result<Vec<Delivery>, crate::dispatch::DispatchError> {
    s.dispatch
        .fetch(&s.cfg.id, count, block.as_millis() as u64)
        .await
}

/// Claims the jobs behind deliveries. Unparseable messages are recorded as failed;
/// deliveries whose job is not claimable (finished, cancelled, a duplicate) are
/// acknowledged so they never block the stream.
async fn claim(
    s: &Shared,
    deliveries: Vec<Delivery>,
    shutdown: &CancellationToken,
) -> Vec<(crate::job::ClaimedJob, String)> {
    let queue = s.dispatch.queue().to_string();
    let mut requests = Vec::with_capacity(deliveries.len());
    let mut entries = std::collections::HashMap::with_capacity(deliveries.len());
    let mut to_ack = Vec::new();
    for d in deliveries {
        let id = match d.payload {
            Payload::Id(id) => id,
            Payload::Job(text) => {
                let fallback = JobId::for_raw_message(&queue, &d.entry);
                match JobSpec::parse(&text, &s.cfg.limits) {
                    Ok(spec) => {
                        let id = spec.id.unwrap_or(fallback);
                        let made = retry_db(shutdown, || {
                            s.record
                                .ensure_raw_job(id, &queue, &spec, s.cfg.max_attempts)
                        })
                        .await;
                        if made.is_none() {
                            continue; // shutting down; the delivery's lease runs out
                        }
                        // A raw job that names a priority waits in that priority's
                        // lane (Redis) instead of being claimed ahead of its turn.
                        if !d.takeover && spec.priority != 0 {
                            match s.dispatch.to_lane(&d.entry, id, spec.priority).await {
                                Ok(true) => continue,
                                Ok(false) => {}
                                Err(e) => {
                                    warn!(job = %id, "could not move a raw job to its priority's lane: {e}")
                                }
                            }
                        }
                        id
                    }
                    Err(e) => {
                        let error = format!("invalid job message {}: {e}", d.entry);
                        warn!(entry = %d.entry, "{error}");
                        let recorded = retry_db(shutdown, || {
                            s.record.record_unparseable(fallback, &queue, &text, &error)
                        })
                        .await;
                        if recorded.is_some() {
                            to_ack.push(d.entry);
                        }
                        continue;
                    }
                }
            }
            Payload::Invalid(reason) => {
                let fallback = JobId::for_raw_message(&queue, &d.entry);
                let error = format!("invalid job message {}: {reason}", d.entry);
                warn!(entry = %d.entry, "{error}");
                let recorded = retry_db(shutdown, || {
                    s.record.record_unparseable(fallback, &queue, "", &error)
                })
                .await;
                if recorded.is_some() {
                    to_ack.push(d.entry);
                }
                continue;
            }
        };
        requests.push(ClaimRequest {
            id,
            takeover: d.takeover,
        });
        entries.insert(id, d.entry);
    }
    let claimed = retry_db(shutdown, || s.record.claim(&requests, &s.cfg.id)).await;
    let mut out = Vec::new();
    if let Some(claimed) = claimed {
        let mut ended: Vec<BatchId> = claimed.failed.iter().filter_map(|f| f.1).collect();
        if !claimed.failed.is_empty() {
            metrics().finished(&queue, "unknown", "failed", claimed.failed.len() as u64);
            warn!(
                n = claimed.failed.len(),
                "jobs failed at claim (attempts used up by dead workers, or an unreadable spec)"
            );
        }
        let mut refused = Vec::new();
        for job in claimed.jobs {
            let Some(entry) = entries.remove(&job.id) else {
                continue;
            };
            // A row written straight into the record (SQL, an older version) is held
            // to the limits a submit is: an escaping `output_key` never reaches a store.
            match job.spec.validate(&s.cfg.limits) {
                Ok(()) => out.push((job, entry)),
                Err(e) => {
                    ended.extend(job.batch_id);
                    let error = format!("refused at claim: {e}");
                    metrics().finished(&queue, &job.spec.model, "failed", 1);
                    warn!(job = %job.id, "{error}");
                    refused.push((
                        job.id,
                        job.attempt,
                        Outcome::Failed {
                            error,
                            retry: false,
                            backoff_ms: 0,
                        },
                    ));
                    to_ack.push(entry);
                }
            }
        }
        if !refused.is_empty() {
            let _ = retry_db(shutdown, || s.record.record_outcomes(&refused)).await;
        }
        if !entries.is_empty() {
            debug!(
                n = entries.len(),
                "deliveries with nothing to claim acknowledged"
            );
        }
        to_ack.extend(entries.into_values());
        super::finish_batches(s, ended).await;
    }
    // When the claim never ran (shutdown), the deliveries stay pending: their leases
    // run out and another worker takes them over.
    if let Err(e) = s.dispatch.ack(&to_ack).await {
        warn!("acknowledging {} deliveries failed: {e}", to_ack.len());
    }
    out
}

/// Retries a database call with backoff until it works or shutdown begins: a
/// Postgres restart must pause the worker, not fail its jobs.
pub(crate) async fn retry_db<T, F, Fut>(shutdown: &CancellationToken, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::db::DbError>>,
{
    let mut wait = Duration::from_millis(100);
    loop {
        // A retry is progress: a loop waiting out a database restart is not stuck.
        tick_current();
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => {
                warn!("database call failed (retrying in {wait:?}): {e}");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return None,
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}
