//! The worker: claim → render → encode → upload → record, as a pipeline of tasks
//! joined by bounded channels, so the device renders one batch while the previous one
//! is encoded and uploaded, and memory stays flat whatever the queue length.
//!
//! ```text
//! intake ──▶ render (grouped by model/size/steps, ≤ max_batch) ──▶ finish (encode,
//!   │                                                               upload)
//!   │ claims in batches                                                │
//!   ▼                                                                  ▼
//! record ◀───────── completions in batches, fenced by attempt ── complete ──▶ ack
//! heartbeat: renews this worker's leases; mover: dispatches due retries;
//! reconciler (one leader): re-dispatches what the record has and dispatch lost;
//! webhooks: sends the due webhooks of finished batches
//! ```
//!
//! `--concurrency` permits bound the jobs between intake and complete; within them,
//! intake holds what the lanes' measured calls need (`sizing`).

mod background;
pub use background::probe_record_and_dispatch;
mod finishing;
mod intake;
mod reconcile;
mod rendering;
mod sizing;
mod webhooks;
pub use sizing::{ClaimSizer, LaneUse};

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    db::{Record, WorkerInfo},
    dispatch::Dispatch,
    job::{BatchId, ClaimedJob, JobId, Limits},
    render::Renderers,
    store::Store,
    telemetry::{Health, metrics, watched},
};

/// How a worker behaves. Every field has a flag and a variable (see the CLI).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs in flight at once (claimed, not yet recorded).
    pub concurrency: usize,
    /// Jobs per device call.
    pub max_batch: usize,
    /// A delivery not renewed for this long is taken over by another worker.
    pub lease: Duration,
    /// On SIGTERM: how long in-flight jobs may take before they are released.
    pub shutdown_deadline: Duration,
    /// Retry backoff: `base * 2^(attempt-1)`, capped, with jitter.
    pub backoff_base: Duration,
    /// The longest wait between retries.
    pub backoff_max: Duration,
    /// How long an upload keeps retrying (store down) before the attempt fails.
    pub upload_deadline: Duration,
    /// How often the reconciler compares the record with dispatch.
    pub reconcile_every: Duration,
    /// First wait before a failed webhook delivery is tried again (doubles).
    pub webhook_backoff: Duration,
    /// A webhook delivery taken this long ago without a recorded outcome (its worker
    /// died) is taken again. Longer than a delivery's retries take.
    pub webhook_retake: Duration,
    /// Attempts of jobs created from raw stream messages.
    pub max_attempts: i32,
    /// This worker's name in the stream's consumer group and `renderq.workers`.
    pub id: String,
    /// The device, as `renderq.workers` shows it.
    pub device: String,
    /// The limits raw messages are checked against.
    pub limits: Limits,
    /// Signing keys and allowed internal hosts for batch webhooks.
    pub webhooks: crate::webhook::WebhookSettings,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 1024,
            max_batch: 8,
            lease: Duration::from_secs(15),
            shutdown_deadline: Duration::from_secs(30),
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            upload_deadline: Duration::from_secs(300),
            reconcile_every: Duration::from_secs(10),
            webhook_backoff: Duration::from_secs(1),
            webhook_retake: Duration::from_secs(120),
            max_attempts: 3,
            id: default_worker_id(),
            device: "cpu".into(),
            limits: Limits::default(),
            webhooks: Default::default(),
        }
    }
}

/// `<host>-<pid>-<random>`: unique per process, readable in `renderq.workers`.
pub fn default_worker_id() -> String {
    format!(
        "{}-{}-{}",
        hostname(),
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

/// This machine's name, for worker ids and `renderq.workers`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into())
}

/// A claimed job on its way through the pipeline. Holding it holds a concurrency permit.
pub(crate) struct InFlight {
    pub job: ClaimedJob,
    pub entry: String,
    /// When it was claimed: a job that waited long for the device is checked for
    /// cancellation before it renders.
    pub claimed_at: tokio::time::Instant,
    pub _permit: sizing::Held,
}

/// What every stage shares.
pub(crate) struct Shared {
    pub cfg: WorkerConfig,
    pub record: Arc<dyn Record>,
    pub dispatch: Arc<dyn Dispatch>,
    pub store: Arc<dyn Store>,
    pub renderers: Renderers,
    /// Stream entry → (job, attempt) of every claimed job not yet recorded.
    pub in_flight: Mutex<HashMap<String, (JobId, i32)>>,
    pub jobs_done: AtomicU64,
    /// Wakes the webhook sender: this worker just finished a batch.
    pub webhooks_due: Notify,
    /// Liveness of the loops, readiness of what the worker needs.
    pub health: Arc<Health>,
    /// How many jobs to hold, from the lanes' measured calls.
    pub sizer: Arc<ClaimSizer>,
}

impl Shared {
    /// Publishes how many jobs are in flight.
    fn count_in_flight(&self, n: usize) {
        metrics().in_flight(self.dispatch.queue(), n);
    }
}

/// A loop busy this long without progress is reported stuck on `/livez`, unless
/// `--stall-secs` says otherwise: longer than a model's load or a device call takes.
pub const DEFAULT_STALL: Duration = Duration::from_secs(600);

/// What a worker did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Jobs this worker finished.
    pub jobs_done: u64,
    /// Jobs still held at the deadline and given back to the queue.
    pub released: usize,
}

/// A worker: claims, renders, stores and records until told to stop.
pub struct Worker {
    shared: Arc<Shared>,
}

impl Worker {
    /// A worker with `cfg`, on this record, dispatch, store and set of renderers.
    pub fn new(
        cfg: WorkerConfig,
        record: Arc<dyn Record>,
        dispatch: Arc<dyn Dispatch>,
        store: Arc<dyn Store>,
        renderers: Renderers,
    ) -> Self {
        let widest = renderers.widest_lane();
        Worker {
            shared: Arc::new(Shared {
                record,
                dispatch,
                store,
                renderers,
                in_flight: Mutex::new(HashMap::new()),
                jobs_done: AtomicU64::new(0),
                webhooks_due: Notify::new(),
                health: Health::new(DEFAULT_STALL),
                sizer: Arc::new(ClaimSizer::new(cfg.concurrency, cfg.max_batch, widest)),
                cfg,
            }),
        }
    }

    /// Reports liveness and readiness into `health` (served by `--listen`).
    pub fn with_health(mut self, health: Arc<Health>) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("a worker is given its health before it runs")
            .health = health;
        self
    }

    /// The worker's claim sizing and what its lanes did (a benchmark prints it).
    pub fn sizer(&self) -> Arc<ClaimSizer> {
        self.shared.sizer.clone()
    }

    /// Runs until `shutdown` is cancelled, then drains: no new claims; jobs in flight
    /// finish until the deadline, and what is left is released to the queue.
    pub async fn run(self, shutdown: CancellationToken) -> WorkerReport {
        let s = self.shared;
        let cfg = &s.cfg;
        info!(
            worker = %cfg.id, queue = s.dispatch.queue(), concurrency = cfg.concurrency,
            max_batch = cfg.max_batch, lease_secs = cfg.lease.as_secs_f64(),
            models = ?s.renderers.models(), "worker started"
        );
        let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
        let depth = cfg.concurrency.max(1);
        let (claimed_tx, claimed_rx) = mpsc::channel(depth);
        let (rendered_tx, rendered_rx) = mpsc::channel(depth);
        let (outcome_tx, outcome_rx) = mpsc::channel(depth);
        // Background tasks stop with `background`; the pipeline stops by draining.
        // Both JoinSets abort their tasks when dropped: a worker whose `run` future is
        // dropped stops heartbeating at once, like a dead process.
        let background = CancellationToken::new();
        let h = &s.health;
        background::probe_readiness(&s);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(background::prepare_models(s.clone(), background.clone()));
        tasks.spawn(watched(
            h.watch("heartbeat"),
            background::heartbeat(s.clone(), background.clone()),
        ));
        tasks.spawn(watched(
            h.watch("retries"),
            background::move_due_retries(s.clone(), background.clone()),
        ));
        tasks.spawn(watched(
            h.watch("reconciler"),
            reconcile::run(s.clone(), background.clone()),
        ));
        // Webhooks stop after the pipeline: its last completions may finish a batch.
        let webhooks_stop = CancellationToken::new();
        let webhooks = tokio::spawn(webhooks::run(s.clone(), webhooks_stop.clone()));
        let _webhooks_guard = AbortOnDrop(webhooks.abort_handle());
        let mut intake = tokio::spawn(intake::run(
            s.clone(),
            permits,
            claimed_tx,
            shutdown.clone(),
        ));
        let mut pipeline = tokio::task::JoinSet::new();
        pipeline.spawn(watched(
            h.watch("render"),
            rendering::render(s.clone(), claimed_rx, rendered_tx),
        ));
        pipeline.spawn(watched(
            h.watch("finish"),
            finishing::finish(s.clone(), rendered_rx, outcome_tx),
        ));
        pipeline.spawn(watched(
            h.watch("complete"),
            finishing::complete(s.clone(), outcome_rx),
        ));

        // Intake ends on its own (a dropped `run` future aborts it through `guard`).
        let guard = AbortOnDrop(intake.abort_handle());
        tokio::select! {
            _ = shutdown.cancelled() => {}
            res = &mut intake => warn!("intake stopped before shutdown: {res:?}"),
        }
        s.health.drain();
        info!(worker = %cfg.id, deadline_secs = cfg.shutdown_deadline.as_secs_f64(), "draining");
        let started = tokio::time::Instant::now();
        // Intake's last read (at most one BLOCK long) must end before anything is
        // released: a read still blocked in Redis would swallow the released jobs.
        if !intake.is_finished() {
            let _ = (&mut intake).await;
        }
        drop(guard);
        let left = cfg.shutdown_deadline.saturating_sub(started.elapsed());
        let drained = tokio::time::timeout(left, async {
            while let Some(res) = pipeline.join_next().await {
                if let Err(e) = res {
                    warn!("a pipeline task ended abnormally: {e}");
                }
            }
        })
        .await;
        pipeline.abort_all();
        let released = if drained.is_err() {
            release_in_flight(&s).await
        } else {
            0
        };
        // Deliveries in flight get what is left of the deadline; one cut short stays
        // due in the record and is sent by another worker after `webhook_retake`.
        webhooks_stop.cancel();
        let left = cfg.shutdown_deadline.saturating_sub(started.elapsed());
        if tokio::time::timeout(left, webhooks).await.is_err() {
            warn!(
                "webhook deliveries still running at the deadline; another worker will send them"
            );
        }
        background.cancel();
        while tasks.join_next().await.is_some() {}
        if let Err(e) = s.record.worker_stopped(&cfg.id).await {
            warn!("could not mark the worker stopped: {e}");
        }
        let report = WorkerReport {
            jobs_done: s.jobs_done.load(Ordering::Relaxed),
            released,
        };
        info!(worker = %cfg.id, jobs_done = report.jobs_done, released, "worker stopped");
        report
    }
}

/// Aborts a task when dropped (a `JoinHandle` alone would detach it).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Gives every job still in flight back to the queue (fenced: a job another worker
/// took over, or that finished meanwhile, is left alone).
async fn release_in_flight(s: &Shared) -> usize {
    let held: Vec<(String, (JobId, i32))> = s.in_flight.lock().unwrap().drain().collect();
    s.count_in_flight(0);
    if held.is_empty() {
        return 0;
    }
    let jobs: Vec<(JobId, i32)> = held.iter().map(|(_, j)| *j).collect();
    let released = match s.record.release(&jobs).await {
        Ok(ids) => ids,
        Err(e) => {
            // Their leases run out and another worker takes them over.
            warn!("could not release {} jobs at shutdown: {e}", jobs.len());
            return 0;
        }
    };
    for (entry, (id, _)) in &held {
        if released.contains(id)
            && let Err(e) = s.dispatch.release(entry, *id).await
        {
            warn!(job = %id, "could not re-dispatch a released job: {e}");
        }
    }
    warn!(
        released = released.len(),
        "shutdown deadline passed: unfinished jobs were given back to the queue"
    );
    released.len()
}

/// Marks finished those of `batches` with no job left unfinished, and wakes the
/// webhook sender for them. Called wherever jobs reach a terminal state.
pub(crate) async fn finish_batches(s: &Shared, mut batches: Vec<BatchId>) {
    if batches.is_empty() {
        return;
    }
    batches.sort_unstable_by_key(|b| b.0);
    batches.dedup();
    match s.record.finish_batches(&batches).await {
        Ok(finished) => {
            for b in &finished {
                info!(batch = %b, "batch finished");
            }
            if !finished.is_empty() {
                s.webhooks_due.notify_one();
            }
        }
        Err(e) => warn!("checking whether batches finished failed: {e}"),
    }
}

/// Exponential backoff with jitter, for retry number `attempt` (1-based).
pub fn backoff(cfg: &WorkerConfig, attempt: i32) -> Duration {
    let exp = cfg
        .backoff_base
        .saturating_mul(1u32 << (attempt.clamp(1, 20) - 1) as u32);
    let capped = exp.min(cfg.backoff_max);
    capped.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

/// WorkerInfo for `renderq.workers`.
pub(crate) fn info(s: &Shared) -> WorkerInfo {
    WorkerInfo {
        id: s.cfg.id.clone(),
        host: hostname(),
        device: s.cfg.device.clone(),
        models: s.renderers.models(),
        queue: s.dispatch.queue().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let cfg = WorkerConfig {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            ..WorkerConfig::default()
        };
        let first = backoff(&cfg, 1);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let third = backoff(&cfg, 3);
        assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
        assert!(backoff(&cfg, 30) <= Duration::from_millis(1000));
    }
}
