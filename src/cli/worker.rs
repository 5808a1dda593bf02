//! `renderq worker`: claim, render, store and record jobs until SIGTERM / SIGINT; and
//! the pipeline options `renderq run` shares with it.

use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{Global, connect, signal_shutdown};
use crate::{
    render::{DiffusionOptions, RemoteOptions, Renderers},
    store,
    worker::{Worker, WorkerConfig, default_worker_id},
};

/// Limits on the worker's sizes: past them memory, not speed, is what grows.
pub const MAX_CONCURRENCY: usize = 65_536;
/// Most jobs per device call.
pub const MAX_BATCH: usize = 1024;

/// How a worker runs: shared by `renderq worker` and `renderq run`.
#[derive(Args, Debug)]
pub struct PipelineArgs {
    /// Most jobs in flight at once; within it the worker holds what its lanes start
    /// in about two seconds (at least two batches per lane)
    #[arg(long, env = "RENDERQ_CONCURRENCY", default_value_t = 1024)]
    pub concurrency: usize,
    /// Jobs per device call
    #[arg(long, env = "RENDERQ_MAX_BATCH", default_value_t = 8)]
    pub max_batch: usize,
    /// Seconds without a heartbeat before another worker takes a job over
    #[arg(long, env = "RENDERQ_LEASE_SECS", default_value_t = 15.0)]
    pub lease_secs: f64,
    /// Seconds in-flight jobs may take after SIGTERM before they are released
    #[arg(long, env = "RENDERQ_SHUTDOWN_SECS", default_value_t = 30.0)]
    pub shutdown_secs: f64,
    /// First retry backoff in seconds (doubles per attempt, with jitter)
    #[arg(long, env = "RENDERQ_BACKOFF_SECS", default_value_t = 2.0)]
    pub backoff_secs: f64,
    /// Seconds between the reconciler's comparisons of the record with Redis
    #[arg(long, env = "RENDERQ_RECONCILE_SECS", default_value_t = 10.0)]
    pub reconcile_secs: f64,
    /// Milliseconds the noop model waits per device call
    #[arg(long, env = "RENDERQ_NOOP_DELAY_MS", default_value_t = 0)]
    pub noop_delay_ms: u64,
    /// For failure drills: every built-in model (placeholder, noop, diffusion) panics
    /// inside its device call on a batch holding a prompt that contains this text
    #[arg(long, env = "RENDERQ_PANIC_ON")]
    pub panic_on: Option<String>,
    /// This worker's name (default: host-pid-random)
    #[arg(long, env = "RENDERQ_WORKER_ID")]
    pub worker_id: Option<String>,
    /// The remote endpoint behind `remote/<name>` models.
    #[command(flatten)]
    pub remote: RemoteOptions,
    /// The diffusion models served.
    #[command(flatten)]
    pub diffusion: DiffusionOptions,
}

/// `renderq worker`: the pipeline's options, and whether it also fires schedules.
#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// How the worker runs.
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Also fire due schedules (one worker at a time leads)
    #[arg(long, env = "RENDERQ_SCHEDULER")]
    pub scheduler: bool,
    /// Attempts of jobs that arrive as raw stream messages
    #[arg(long, env = "RENDERQ_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: i32,
    /// The health and metrics endpoints.
    #[command(flatten)]
    pub listen: super::listen::ListenArgs,
}

impl PipelineArgs {
    /// The renderers these options ask for: the built-in models, diffusion and remote.
    pub fn renderers(&self) -> Result<Renderers> {
        Renderers::configured(
            self.noop_delay_ms,
            self.panic_on.clone(),
            &self.diffusion,
            &self.remote,
        )
        .map_err(anyhow::Error::msg)
    }

    /// The worker's configuration, every flag checked against its limits.
    pub fn config(&self, max_attempts: i32) -> Result<WorkerConfig> {
        let secs = |name: &str, v: f64| -> Result<Duration> {
            Duration::try_from_secs_f64(v)
                .with_context(|| format!("--{name} must be a positive number of seconds"))
        };
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            bail!(
                "--concurrency {} is outside the limit 1..={MAX_CONCURRENCY}",
                self.concurrency
            );
        }
        if !(1..=MAX_BATCH).contains(&self.max_batch) {
            bail!(
                "--max-batch {} is outside the limit 1..={MAX_BATCH}",
                self.max_batch
            );
        }
        Ok(WorkerConfig {
            concurrency: self.concurrency,
            max_batch: self.max_batch,
            lease: secs("lease-secs", self.lease_secs)?,
            shutdown_deadline: secs("shutdown-secs", self.shutdown_secs)?,
            backoff_base: secs("backoff-secs", self.backoff_secs)?,
            reconcile_every: secs("reconcile-secs", self.reconcile_secs)?,
            max_attempts,
            id: self.worker_id.clone().unwrap_or_else(default_worker_id),
            webhooks: crate::webhook::WebhookSettings::from_env().map_err(anyhow::Error::msg)?,
            ..WorkerConfig::default()
        })
    }
}

pub async fn command(g: &Global, args: WorkerArgs) -> Result<ExitCode> {
    let cfg = args.pipeline.config(args.max_attempts)?;
    // Listening first: /livez answers while the record and models are reached.
    let health = args.listen.start().await?;
    let (record, dispatch) = connect(g, cfg.lease).await?;
    let (scheduler_record, scheduler_dispatch) = (record.clone(), dispatch.clone());
    let store = store::open(&g.store).await?;
    let worker = Worker::new(
        cfg,
        record,
        dispatch,
        Arc::from(store),
        args.pipeline.renderers()?,
    )
    .with_health(health.clone());
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    let scheduler = args.scheduler.then(|| {
        tokio::spawn(crate::telemetry::watched(
            health.watch("scheduler"),
            crate::scheduler::run(scheduler_record, scheduler_dispatch, shutdown.clone(), true),
        ))
    });
    worker.run(shutdown).await;
    if let Some(s) = scheduler {
        let _ = s.await;
    }
    Ok(ExitCode::SUCCESS)
}
