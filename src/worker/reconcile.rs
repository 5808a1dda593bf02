//! The reconciler: the record is the truth, and Redis dispatch may lose jobs (FLUSHALL,
//! a failover without AOF, a crash between commit and XADD); the database dispatchers
//! cannot, so it runs only with Redis. It sends them again:
//! `queued` jobs back to the stream, `retrying` jobs back to the delayed set, and
//! `running` jobs of workers whose heartbeat stopped back to `queued` (or to `failed`
//! when that was their last attempt, as a takeover does).
//!
//! It runs inside workers, one leader per queue at a time (an advisory lock). Its
//! memory and each step's work are bounded whatever the queue's length: a round
//! first copies the job ids the streams hold into a snapshot kept on the Redis
//! server ([`PAGES_PER_STEP`] pages a step), then pages through the record by id
//! and asks the snapshot about one page at a time. Steps are [`STEP_PAUSE`] apart,
//! so a round over a long queue spans many steps; rounds start `reconcile_every`
//! apart. A `queued` or `retrying` job is repaired only when it was missing on two
//! rounds in a row, so a submit between its commit and its XADD is left alone.

use std::{collections::HashSet, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Shared;
use crate::telemetry::{idle_current, metrics, tick_current};
use crate::{
    db::Leadership,
    dispatch::{Reconcile, Snapshot},
    job::{JobId, JobState},
};

/// Entries (or record rows) per page.
pub(crate) const PAGE: usize = 1000;
/// Most pages one step reads, from Redis or from the record.
pub(crate) const PAGES_PER_STEP: usize = 8;
/// Pause between the steps of a round.
const STEP_PAUSE: Duration = Duration::from_millis(100);
/// Most suspects a round remembers for the next (16 bytes each, and the set's own):
/// a queue that lost more is repaired this many a round.
const MAX_SUSPECTS: usize = 200_000;
/// Most orphaned running jobs rescued a round (running jobs are bounded by the
/// fleet's concurrency anyway).
const MAX_ORPHANS: i64 = 10_000;

/// Where a round is.
enum Phase {
    /// Copying the ids dispatch holds into the snapshot.
    Snapshot(Snapshot),
    /// Comparing the record's jobs in `state`, by id after `after`.
    Compare {
        state: JobState,
        after: Option<JobId>,
    },
    /// Rescuing running jobs of dead workers, then ending the round.
    Orphans,
}

/// One round: its phase, and what it found.
struct Round {
    phase: Phase,
    started: tokio::time::Instant,
    /// Jobs missing from dispatch in this round, not yet repaired.
    suspects: HashSet<JobId>,
    redispatched: usize,
    rescheduled: usize,
    rescued: usize,
    failed: usize,
    record_pages: u64,
    dispatch_pages: u64,
    dispatch_entries: u64,
}

pub(crate) async fn run(s: Arc<Shared>, stop: CancellationToken) {
    if s.dispatch.reconcile().is_none() {
        // Dispatch lives in the record: nothing can be lost, but the backlog is still
        // published by one leader.
        return publish_backlog(s, stop).await;
    }
    let name = format!("renderq-reconciler:{}", s.dispatch.queue());
    let mut lead: Option<Leadership> = None;
    let mut previous: HashSet<JobId> = HashSet::new();
    let mut round: Option<Round> = None;
    loop {
        let pause = if round.is_some() {
            STEP_PAUSE
        } else {
            s.cfg.reconcile_every
        };
        idle_current();
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return,
        }
        tick_current();
        if lead.is_none() {
            match s.record.lead(&name).await {
                Ok(Some(l)) => {
                    debug!(
                        queue = s.dispatch.queue(),
                        "this worker leads the reconciler"
                    );
                    lead = Some(l);
                }
                Ok(None) => continue,
                Err(e) => {
                    debug!("reconciler: cannot take the lead: {e}");
                    continue;
                }
            }
        }
        let current = match round.take() {
            Some(r) => r,
            None => match begin(&s).await {
                Ok(r) => r,
                Err(e) => {
                    warn!("reconciler round failed to start: {e}");
                    lead = None;
                    continue;
                }
            },
        };
        match step(&s, current, &previous).await {
            Ok(Step::Continue(r)) => round = Some(r),
            Ok(Step::Done(r)) => {
                report(&s, &r);
                backlog(&s).await;
                previous = r.suspects;
            }
            Err(e) => {
                warn!("reconciler round failed: {e}");
                lead = None; // the lock's connection may be gone; take it again
            }
        }
    }
}

/// The leader's other duty on database dispatch: the backlog metric.
async fn publish_backlog(s: Arc<Shared>, stop: CancellationToken) {
    let name = format!("renderq-backlog:{}", s.dispatch.queue());
    let mut lead: Option<Leadership> = None;
    loop {
        idle_current();
        tokio::select! {
            _ = tokio::time::sleep(s.cfg.reconcile_every) => {}
            _ = stop.cancelled() => return,
        }
        tick_current();
        if lead.is_none() {
            lead = s.record.lead(&name).await.ok().flatten();
        }
        if lead.is_some() && !backlog(&s).await {
            lead = None; // the lock's connection may be gone; take it again
        }
    }
}

/// Reads the queue's unfinished jobs by state from the record into the metric.
async fn backlog(s: &Shared) -> bool {
    let queue = s.dispatch.queue();
    match s.record.backlog(queue).await {
        Ok(counts) => {
            for (state, n) in counts {
                metrics().backlog(queue, state.as_str(), n);
            }
            true
        }
        Err(e) => {
            debug!("reading the backlog failed: {e}");
            false
        }
    }
}

fn reconcile(s: &Shared) -> &dyn Reconcile {
    s.dispatch
        .reconcile()
        .expect("the reconciler runs only on dispatch that can lose jobs")
}

async fn begin(s: &Shared) -> anyhow::Result<Round> {
    Ok(Round {
        phase: Phase::Snapshot(reconcile(s).begin_snapshot().await?),
        started: tokio::time::Instant::now(),
        suspects: HashSet::new(),
        redispatched: 0,
        rescheduled: 0,
        rescued: 0,
        failed: 0,
        record_pages: 0,
        dispatch_pages: 0,
        dispatch_entries: 0,
    })
}

enum Step {
    Continue(Round),
    Done(Round),
}

/// One bounded step of a round: at most [`PAGES_PER_STEP`] pages read.
async fn step(s: &Shared, mut round: Round, previous: &HashSet<JobId>) -> anyhow::Result<Step> {
    let r = reconcile(s);
    match &mut round.phase {
        Phase::Snapshot(snap) => {
            let complete = r.continue_snapshot(snap, PAGES_PER_STEP, PAGE).await?;
            (round.dispatch_pages, round.dispatch_entries) = (snap.pages, snap.entries);
            if complete {
                round.phase = Phase::Compare {
                    state: JobState::Queued,
                    after: None,
                };
            }
        }
        Phase::Compare { state, after } => {
            let state = *state;
            let mut cursor = *after;
            let mut exhausted = false;
            for _ in 0..PAGES_PER_STEP {
                let page = s
                    .record
                    .unfinished_page(s.dispatch.queue(), state, cursor, PAGE as i64)
                    .await?;
                round.record_pages += 1;
                cursor = page.last().map(|(id, _)| *id).or(cursor);
                let ids: Vec<JobId> = page.iter().map(|(id, _)| *id).collect();
                let missing: HashSet<JobId> = r.missing(&ids).await?.into_iter().collect();
                let mut requeue = Vec::new();
                for (id, due) in page.iter().filter(|(id, _)| missing.contains(id)) {
                    if !previous.contains(id) {
                        if round.suspects.len() < MAX_SUSPECTS {
                            round.suspects.insert(*id);
                        }
                    } else if state == JobState::Queued {
                        requeue.push(*id);
                    } else {
                        r.schedule(*id, *due).await?;
                        round.rescheduled += 1;
                    }
                }
                redispatch(s, &requeue).await?;
                round.redispatched += requeue.len();
                if page.len() < PAGE {
                    exhausted = true;
                    break;
                }
            }
            round.phase = match (exhausted, state) {
                (false, _) => Phase::Compare {
                    state,
                    after: cursor,
                },
                (true, JobState::Queued) => Phase::Compare {
                    state: JobState::Retrying,
                    after: None,
                },
                (true, _) => Phase::Orphans,
            };
        }
        Phase::Orphans => {
            rescue_orphans(s, &mut round).await?;
            r.end_snapshot().await?;
            return Ok(Step::Done(round));
        }
    }
    Ok(Step::Continue(round))
}

/// Running jobs of dead workers whose entries dispatch lost (an entry still held is
/// left to the takeover that reads it): back to `queued`, or `failed` on their last
/// attempt.
async fn rescue_orphans(s: &Shared, round: &mut Round) -> anyhow::Result<()> {
    let silent_ms = s.cfg.lease.as_millis() as i64;
    let orphans = s
        .record
        .orphans(s.dispatch.queue(), silent_ms, MAX_ORPHANS)
        .await?;
    if orphans.is_empty() {
        return Ok(());
    }
    let ids: Vec<JobId> = orphans.iter().map(|(id, _)| *id).collect();
    let missing: HashSet<JobId> = reconcile(s).missing(&ids).await?.into_iter().collect();
    let lost: Vec<(JobId, i32)> = orphans
        .into_iter()
        .filter(|(id, _)| missing.contains(id))
        .collect();
    if lost.is_empty() {
        return Ok(());
    }
    let rescued = s.record.rescue(&lost).await?;
    redispatch(s, &rescued.requeued).await?;
    round.rescued += rescued.requeued.len();
    round.failed += rescued.failed.len();
    if !rescued.failed.is_empty() {
        warn!(
            queue = s.dispatch.queue(),
            n = rescued.failed.len(),
            "jobs of dead workers had no attempts left: failed"
        );
        super::finish_batches(s, rescued.failed.iter().filter_map(|f| f.1).collect()).await;
    }
    Ok(())
}

/// Dispatches jobs again, each in its batch's lane of its priority.
async fn redispatch(s: &Shared, ids: &[JobId]) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let placed = s.record.placement(ids).await?;
    crate::dispatch::enqueue_placed(s.dispatch.as_ref(), &placed).await?;
    Ok(())
}

fn report(s: &Shared, r: &Round) {
    let Phase::Orphans = r.phase else { return };
    let repaired = r.redispatched + r.rescheduled + r.rescued + r.failed;
    let took = r.started.elapsed();
    let queue = s.dispatch.queue();
    for (kind, n) in [
        ("redispatched", r.redispatched),
        ("rescheduled", r.rescheduled),
        ("rescued", r.rescued),
        ("failed", r.failed),
    ] {
        metrics().repaired(queue, kind, n);
    }
    if repaired > 0 {
        info!(
            queue = s.dispatch.queue(),
            redispatched = r.redispatched,
            rescheduled = r.rescheduled,
            rescued_from_dead_workers = r.rescued,
            failed_after_dead_workers = r.failed,
            suspects = r.suspects.len(),
            secs = took.as_secs_f64(),
            "reconciler repaired dispatch"
        );
    }
    debug!(
        queue = s.dispatch.queue(),
        secs = took.as_secs_f64(),
        dispatch_pages = r.dispatch_pages,
        dispatch_entries = r.dispatch_entries,
        record_pages = r.record_pages,
        suspects = r.suspects.len(),
        "reconciler round done"
    );
}
