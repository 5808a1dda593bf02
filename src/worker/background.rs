//! The worker's background tasks: the heartbeat that keeps its leases, and the mover
//! of due retries back into their lanes.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Shared;
use crate::{
    render::RenderError,
    telemetry::{Health, ProbeResult, idle_current, tick_current},
};

/// Readiness: the record, dispatch and store answer, and every model is loaded.
pub(crate) fn probe_readiness(s: &Arc<Shared>) {
    let h = &s.health;
    probe_record_and_dispatch(h, s.record.clone(), s.dispatch.clone());
    let store = s.store.clone();
    h.probe(
        "store",
        Arc::new(move || {
            let st = store.clone();
            Box::pin(async move { st.ping().await.map_err(|e| e.to_string()) })
        }),
    );
    for model in s.renderers.models() {
        set_model(s, &model, Err("loading".into()));
    }
}

/// Readiness of what every long-running process needs: the record and dispatch answer.
pub fn probe_record_and_dispatch(
    h: &Health,
    record: Arc<dyn crate::db::Record>,
    dispatch: Arc<dyn crate::dispatch::Dispatch>,
) {
    h.probe(
        "record",
        Arc::new(move || {
            let r = record.clone();
            Box::pin(async move { r.ping().await.map_err(|e| e.to_string()) })
        }),
    );
    h.probe(
        "dispatch",
        Arc::new(move || {
            let d = dispatch.clone();
            Box::pin(async move { d.ping().await.map_err(|e| e.to_string()) })
        }),
    );
}

/// Readiness of one model: what its last load said.
fn set_model(s: &Shared, model: &str, state: ProbeResult) {
    s.health.probe(
        &format!("model {model}"),
        Arc::new(move || {
            let state = state.clone();
            Box::pin(async move { state })
        }),
    );
}

/// Loads every model at start (not on its first batch), so readiness means it can
/// render. A load that fails is tried again every 30 s; batches try too.
pub(crate) async fn prepare_models(s: Arc<Shared>, stop: CancellationToken) {
    for model in s.renderers.models() {
        let Some(renderer) = s.renderers.get(&model) else {
            continue;
        };
        loop {
            let loaded = tokio::select! {
                r = renderer.prepare() => r,
                _ = stop.cancelled() => return,
            };
            match loaded {
                Ok(()) => {
                    set_model(&s, &model, Ok(()));
                    break;
                }
                Err(e) => {
                    let e = match e {
                        RenderError::Abort(m) | RenderError::Retry(m) => m,
                    };
                    warn!(model, "model not loaded (trying again in 30 s): {e}");
                    set_model(&s, &model, Err(e));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }
}

/// Keeps this worker's leases alive and its row in `renderq.workers` fresh.
pub(crate) async fn heartbeat(s: Arc<Shared>, stop: CancellationToken) {
    let every = (s.cfg.lease / 3).max(Duration::from_millis(50));
    let info = super::info(&s);
    loop {
        tick_current();
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
        idle_current();
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Moves retries whose backoff is over from the delayed set back to the queue.
pub(crate) async fn move_due_retries(s: Arc<Shared>, stop: CancellationToken) {
    let every = Duration::from_millis(250).min(s.cfg.backoff_base.max(Duration::from_millis(20)));
    // With nothing due, wait for the next due time, at most this long (a retry
    // deferred meanwhile waits up to this much more than its backoff, unless another
    // worker of the fleet asks sooner): an idle worker asks every 4 s.
    let quiet = (s.cfg.backoff_base * 2).clamp(every, Duration::from_secs(4));
    let mut wait = every;
    loop {
        idle_current();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        tick_current();
        wait = every;
        let now = chrono::Utc::now().timestamp_millis();
        let delayed = s.dispatch.delayed();
        let due = match delayed {
            Some(set) => set.due(now, 500).await.map_err(|e| e.to_string()),
            None => (s.record)
                .due_retries(s.dispatch.queue(), 500)
                .await
                .map(|ids| crate::dispatch::Due { ids, next_ms: None })
                .map_err(|e| e.to_string()),
        };
        let due = match due {
            Ok(d) if d.ids.is_empty() => {
                wait = match d.next_ms {
                    Some(at) => Duration::from_millis((at - now).max(0) as u64).clamp(every, quiet),
                    None => quiet,
                };
                continue;
            }
            Ok(d) => d.ids,
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
