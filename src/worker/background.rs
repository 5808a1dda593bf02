//! The worker's background tasks: the heartbeat that keeps its leases, and the mover
//! of due retries back into their lanes.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Shared;

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
        let delayed = s.dispatch.delayed();
        let due = match delayed {
            Some(set) => set.due(now, 500).await.map_err(|e| e.to_string()),
            None => (s.record)
                .due_retries(s.dispatch.queue(), 500)
                .await
                .map_err(|e| e.to_string()),
        };
        let due = match due {
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
        // On database dispatch `queued` is all a row needs; a delayed set hands them out.
        let Some(set) = delayed else {
            continue;
        };
        let gone: Vec<_> = due
            .iter()
            .filter(|id| !queued.contains(id))
            .copied()
            .collect();
        let moved = set.move_due(&queued).await;
        let dropped = set.drop_due(&gone).await;
        if let Err(e) = moved.and(dropped) {
            warn!("moving due retries failed: {e}");
        }
    }
}
