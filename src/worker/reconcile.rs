//! The reconciler: Postgres is the record, Redis only dispatch. When dispatch lost
//! jobs (FLUSHALL, a failover without AOF, a crash between commit and XADD), it sends
//! them again: `queued` jobs back to the stream, `retrying` jobs back to the delayed
//! set, and `running` jobs of workers whose heartbeat stopped back to `queued`.
//!
//! It runs inside workers, one leader per queue at a time (a Postgres advisory lock).
//! A `queued` or `retrying` job is repaired only when it was missing from dispatch on
//! two rounds in a row, so a submit between its commit and its XADD is left alone.

use std::{collections::HashSet, sync::Arc};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Shared;
use crate::{db::Leadership, job::JobId};

pub(crate) async fn run(s: Arc<Shared>, stop: CancellationToken) {
    let every = s.cfg.reconcile_every;
    let name = format!("renderq-reconciler:{}", s.dispatch.queue());
    let mut lead: Option<Leadership> = None;
    let mut suspects: HashSet<JobId> = HashSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
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
        match round(&s, &mut suspects).await {
            Ok(true) => {}
            Ok(false) => return, // dispatch lives in the record: nothing can be lost
            Err(e) => {
                warn!("reconciler round failed: {e}");
                lead = None; // the lock's connection may be gone; take it again
            }
        }
    }
}

/// One comparison of the record with dispatch. Returns false when dispatch cannot
/// lose jobs.
async fn round(s: &Shared, suspects: &mut HashSet<JobId>) -> anyhow::Result<bool> {
    let Some(held) = s.dispatch.held().await? else {
        return Ok(false);
    };
    let silent_ms = s.cfg.lease.as_millis() as i64;
    let unfinished = s.record.unfinished(s.dispatch.queue(), silent_ms).await?;
    let mut missing = HashSet::new();
    let mut requeue = Vec::new();
    for id in &unfinished.queued {
        if !held.contains(id) && missing.insert(*id) && suspects.contains(id) {
            requeue.push(*id);
        }
    }
    let mut reschedule = Vec::new();
    for (id, due) in &unfinished.retrying {
        if !held.contains(id) && missing.insert(*id) && suspects.contains(id) {
            reschedule.push((*id, *due));
        }
    }
    *suspects = missing;
    let orphans: Vec<(JobId, i32)> = unfinished
        .orphaned
        .into_iter()
        .filter(|(id, _)| !held.contains(id))
        .collect();
    let released = if orphans.is_empty() {
        Vec::new()
    } else {
        s.record.release(&orphans).await?
    };
    requeue.extend(&released);
    s.dispatch.enqueue(&requeue).await?;
    for (id, due) in &reschedule {
        s.dispatch.schedule(*id, *due).await?;
    }
    for id in requeue.iter().chain(reschedule.iter().map(|(id, _)| id)) {
        suspects.remove(id);
    }
    if !requeue.is_empty() || !reschedule.is_empty() {
        info!(
            queue = s.dispatch.queue(),
            redispatched = requeue.len() - released.len(),
            rescheduled = reschedule.len(),
            rescued_from_dead_workers = released.len(),
            "reconciler repaired dispatch"
        );
    }
    Ok(true)
}
