//! The `renderq` command line: parses configuration (flags, then environment, then
//! defaults) and calls the library.

mod manifest;
mod run;
mod schedules;
mod watch;

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::{
    backend::{self, Database},
    catalogue::{Catalogue, JobDefaults, Template},
    db::{NewJob, Record},
    dispatch::Dispatch,
    job::Limits,
    render::Renderers,
    store,
    submit::{self, SubmitError},
    worker::{Worker, WorkerConfig, default_worker_id},
};

#[derive(Parser, Debug)]
#[command(
    name = "renderq",
    version,
    about = "Bulk text-to-image rendering: submit, work, watch"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the parts are. Each is a flag and an environment variable.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The record: postgres://user:password@host/db or sqlite://path [default: sqlite://renderq.db]
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Dispatch: redis://host:6379 [default: none, dispatch through the database]
    #[arg(long, env = "REDIS_URL", global = true, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Where images go: s3://bucket/prefix, or a local directory
    #[arg(
        long,
        env = "RENDERQ_STORE",
        global = true,
        default_value = "renderq-out"
    )]
    pub store: String,
    /// The queue to submit to or work on
    #[arg(long, env = "RENDERQ_QUEUE", global = true, default_value = "default")]
    pub queue: String,
    /// Do not apply database migrations on start
    #[arg(long, env = "RENDERQ_NO_MIGRATE", global = true)]
    pub no_migrate: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Apply the database migrations
    Migrate,
    /// Validate a JSON Lines file and queue it as one batch; prints the batch id last
    Submit(SubmitArgs),
    /// Claim, render, store and record jobs until SIGTERM / SIGINT
    Worker(WorkerArgs),
    /// Counts by state and failures: of one batch, or of recent batches
    Status {
        /// A batch id; without it, recent batches and the queue's counts
        batch: Option<String>,
    },
    /// Wait until every job of a batch is finished; exit 0 if all succeeded, 1 if not
    Wait {
        batch: String,
        /// How often to poll the record
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
    },
    /// Cancel a job, or every unfinished job of a batch
    Cancel { id: String },
    /// Put a batch's failed jobs back in the queue
    Retry {
        batch: String,
        /// Attempts each job gets anew
        #[arg(long, default_value_t = 3)]
        max_attempts: i32,
    },
    /// Write a batch's results (CSV or JSON Lines): job id, source columns, state,
    /// object key and URL, seed, error
    Manifest {
        batch: String,
        /// csv or jsonl
        #[arg(long, default_value = "csv")]
        format: String,
        /// Write here instead of stdout
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// How long presigned S3 URLs stay valid, in seconds
        #[arg(long, default_value_t = 7 * 24 * 3600)]
        expires_secs: u64,
    },
    /// Submit, work and wait in one process, then write a contact sheet
    Run(RunArgs),
    /// Cron schedules that turn a file into a batch at each firing
    #[command(subcommand)]
    Schedule(schedules::ScheduleCommand),
    /// Fire due schedules until SIGTERM / SIGINT
    Scheduler,
    /// Measure drain throughput and submit time (noop model, tiny images)
    Bench(crate::bench::BenchArgs),
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// JSON Lines file, one job per line
    pub file: PathBuf,
    /// A name for the batch (default: the file name)
    #[arg(long)]
    pub name: Option<String>,
    /// Print {"batch_id": …, "jobs": N} instead of the batch id
    #[arg(long)]
    pub json: bool,
    /// Attempts per job before it is marked failed
    #[arg(long, env = "RENDERQ_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: i32,
    /// CSV: the prompt over the row's columns, e.g. 'studio photo of {name} in {color}'
    #[arg(long)]
    pub template: Option<String>,
    /// CSV: jobs per row, each with its own seed
    #[arg(long, default_value_t = 1)]
    pub variants: u32,
    /// CSV: the object key over the columns, {variant} (0-based) and {job_id}; the
    /// extension is added
    #[arg(long)]
    pub key: Option<String>,
    /// Default width for jobs that set none
    #[arg(long)]
    pub width: Option<u32>,
    /// Default height for jobs that set none
    #[arg(long)]
    pub height: Option<u32>,
    /// Default model for jobs that set none
    #[arg(long)]
    pub model: Option<String>,
    /// Default steps for jobs that set none
    #[arg(long)]
    pub steps: Option<u32>,
    /// Default format (png, webp, jpeg) for jobs that set none
    #[arg(long)]
    pub format: Option<String>,
    /// POST a signed JSON summary here when the batch finishes (Standard Webhooks
    /// signature under RENDERQ_WEBHOOK_SECRET, which must be set)
    #[arg(long)]
    pub webhook: Option<String>,
}

impl SubmitArgs {
    fn defaults(&self) -> Result<JobDefaults> {
        let format = match self.format.as_deref() {
            None => None,
            Some(f) => Some(
                serde_json::from_value(serde_json::Value::from(f))
                    .map_err(|_| anyhow::anyhow!("--format `{f}` is not one of png, webp, jpeg"))?,
            ),
        };
        Ok(JobDefaults {
            width: self.width,
            height: self.height,
            model: self.model.clone(),
            steps: self.steps,
            format,
        })
    }

    /// CSV when a template is given or the file ends in `.csv`.
    fn catalogue(&self) -> Result<Option<Catalogue>> {
        let is_csv = self
            .file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        let Some(template) = &self.template else {
            if is_csv {
                bail!(
                    "{} is a CSV file: say how a row becomes a prompt with --template 'photo of {{name}}'",
                    self.file.display()
                );
            }
            return Ok(None);
        };
        let template = Template::parse(template).map_err(|e| anyhow::anyhow!("--template: {e}"))?;
        let key = self
            .key
            .as_deref()
            .map(Template::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--key: {e}"))?;
        Ok(Some(Catalogue {
            template,
            variants: self.variants,
            key,
            defaults: self.defaults()?,
        }))
    }
}

/// Limits on the worker's sizes: past them memory, not speed, is what grows.
pub const MAX_CONCURRENCY: usize = 65_536;
pub const MAX_BATCH: usize = 1024;

/// How a worker runs: shared by `renderq worker` and `renderq run`.
#[derive(Args, Debug)]
pub struct PipelineArgs {
    /// Jobs in flight at once
    #[arg(long, env = "RENDERQ_CONCURRENCY", default_value_t = 64)]
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
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(flatten)]
    pub diffusion: DiffusionArgs,
}

/// The Stable Diffusion models this worker serves, and on what.
#[derive(Args, Debug)]
pub struct DiffusionArgs {
    /// Diffusion models to serve, comma-separated (sd-1.5, sd-2.1, sd-turbo, sdxl, sdxl-turbo)
    #[arg(long, env = "RENDERQ_DIFFUSION", value_delimiter = ',')]
    pub diffusion: Vec<String>,
    /// Where their weights are: DIR/<model>/ in the diffusers layout or a Hugging Face cache entry
    #[arg(long, env = "RENDERQ_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// Download missing weights from the Hugging Face hub instead (needs a network)
    #[arg(long, env = "RENDERQ_HUB")]
    pub hub: bool,
    /// cpu, cuda, cuda:N or metal (GPU builds need --features cuda or metal); one worker per device
    #[arg(long, env = "RENDERQ_DEVICE", default_value = "cpu")]
    pub device: String,
    /// f32, f16 or bf16 (default: f32 on CPU, f16 on GPUs)
    #[arg(long, env = "RENDERQ_DTYPE")]
    pub dtype: Option<String>,
    /// Attention slice size (smaller: less memory, slower); 0 turns slicing off
    /// (default: 1 on CPU, off on GPUs)
    #[arg(long, env = "RENDERQ_ATTENTION_SLICE")]
    pub attention_slice: Option<usize>,
}

impl DiffusionArgs {
    fn add_to(&self, renderers: &mut Renderers, poison: &crate::render::PanicOn) -> Result<()> {
        use crate::render::diffusion::{self, Architecture, DiffusionRenderer, WeightSource};
        if self.diffusion.is_empty() {
            return Ok(());
        }
        let device = diffusion::device(&self.device).map_err(anyhow::Error::msg)?;
        let dtype = match &self.dtype {
            Some(d) => diffusion::dtype(d, &device).map_err(anyhow::Error::msg)?,
            None => diffusion::default_dtype(&device),
        };
        let slice = match self.attention_slice {
            Some(0) => None,
            Some(n) => Some(n),
            None if device.is_cpu() => Some(1),
            None => None,
        };
        for model in &self.diffusion {
            let model = model.trim();
            let arch = Architecture::preset(model, slice).with_context(|| {
                format!(
                    "--diffusion: unknown model `{model}` (known: {})",
                    diffusion::PRESETS.join(", ")
                )
            })?;
            let source = if self.hub {
                WeightSource::Hub
            } else {
                WeightSource::Local(self.models_dir.join(model))
            };
            let renderer = DiffusionRenderer::new(model, arch, source, device.clone(), dtype)
                .panicking_on(poison.clone());
            renderers.insert(model, Arc::new(renderer));
        }
        Ok(())
    }
}

/// The images endpoint behind `remote/<name>` models. The bearer key is read from
/// `RENDERQ_REMOTE_API_KEY` only: a flag would show it in `ps`.
#[derive(Args, Debug)]
pub struct RemoteArgs {
    /// OpenAI-style images API serving `remote/<name>` (e.g. http://npu-host:30000/v1)
    #[arg(long, env = "RENDERQ_REMOTE_URL")]
    pub remote_url: Option<String>,
    /// The API's dialect (default: zhipu for URLs under /api/paas/, else openai)
    #[arg(long, env = "RENDERQ_REMOTE_FLAVOR", value_enum)]
    pub remote_flavor: Option<crate::render::remote::Flavor>,
    /// How an openai-flavoured endpoint returns images
    #[arg(
        long,
        env = "RENDERQ_REMOTE_RESPONSE_FORMAT",
        value_enum,
        default_value = "b64_json"
    )]
    pub remote_response_format: crate::render::remote::ResponseFormat,
    /// Requests in flight to the endpoint (set --max-batch at least as high)
    #[arg(long, env = "RENDERQ_REMOTE_CONCURRENCY", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub remote_concurrency: u32,
    /// Seconds one request may take, generation included
    #[arg(long, env = "RENDERQ_REMOTE_TIMEOUT_SECS", default_value_t = 300.0)]
    pub remote_timeout_secs: f64,
    /// Tries per job within one render on 429, 5xx and timeouts (then the job's retry)
    #[arg(long, env = "RENDERQ_REMOTE_ATTEMPTS", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub remote_attempts: u32,
    /// Largest response body read from the endpoint, in bytes (a larger one fails the job)
    #[arg(long, env = "RENDERQ_REMOTE_MAX_RESPONSE_BYTES",
          default_value_t = crate::render::remote::DEFAULT_MAX_RESPONSE_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(1024..=(1 << 32)))]
    pub remote_max_response_bytes: u64,
}

impl RemoteArgs {
    pub fn config(&self) -> Result<Option<crate::render::RemoteConfig>> {
        let Some(url) = &self.remote_url else {
            return Ok(None);
        };
        if !(self.remote_timeout_secs.is_finite() && self.remote_timeout_secs > 0.0) {
            bail!("--remote-timeout-secs must be a positive number of seconds");
        }
        let mut cfg = crate::render::RemoteConfig::new(url);
        cfg.api_key = std::env::var("RENDERQ_REMOTE_API_KEY")
            .ok()
            .filter(|k| !k.is_empty());
        if let Some(flavor) = self.remote_flavor {
            cfg.flavor = flavor;
        }
        cfg.response_format = self.remote_response_format;
        cfg.concurrency = self.remote_concurrency as usize;
        cfg.timeout = Duration::from_secs_f64(self.remote_timeout_secs);
        cfg.attempts = self.remote_attempts;
        cfg.max_response_bytes = self.remote_max_response_bytes as usize;
        Ok(Some(cfg))
    }
}

impl PipelineArgs {
    pub fn renderers(&self) -> Result<Renderers> {
        let poison = crate::render::PanicOn::new(self.panic_on.clone());
        let mut renderers = Renderers::builtin_panicking(self.noop_delay_ms, poison.clone());
        self.diffusion.add_to(&mut renderers, &poison)?;
        if let Some(cfg) = self.remote.config()? {
            let remote = crate::render::RemoteRenderer::new(cfg).map_err(anyhow::Error::msg)?;
            renderers.insert_remote(remote);
        }
        Ok(renderers)
    }
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Also fire due schedules (one worker at a time leads)
    #[arg(long, env = "RENDERQ_SCHEDULER")]
    pub scheduler: bool,
    /// Attempts of jobs that arrive as raw stream messages
    #[arg(long, env = "RENDERQ_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: i32,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub submit: SubmitArgs,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

impl PipelineArgs {
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

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    crate::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(run(cli));
    // A render stuck on the blocking pool must not hold the exit after a drain.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr: text by default (colour codes only on a terminal), or one JSON
/// object per line with `RENDERQ_LOG_FORMAT=json`, for log collectors.
fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RENDERQ_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("renderq=info,warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match std::env::var("RENDERQ_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().flatten_event(true).init(),
        Ok("text") | Err(_) => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        Ok(other) => {
            builder.with_ansi(false).init();
            tracing::warn!("RENDERQ_LOG_FORMAT `{other}` is not `text` or `json`; logging text");
        }
    }
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Migrate => {
            let record = connect_record(g, false).await?;
            record.migrate().await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit(args) => submit_cmd(g, args).await,
        Command::Worker(args) => worker_cmd(g, args).await,
        Command::Status { batch } => {
            watch::status(
                connect_record(g, !g.no_migrate).await?.as_ref(),
                &g.queue,
                batch,
            )
            .await
        }
        Command::Wait { batch, interval_ms } => {
            let record = connect_record(g, !g.no_migrate).await?;
            watch::wait(record.as_ref(), &batch, Duration::from_millis(interval_ms)).await
        }
        Command::Cancel { id } => {
            watch::cancel(connect_record(g, !g.no_migrate).await?.as_ref(), &id).await
        }
        Command::Run(args) => run::run(g, args).await,
        Command::Schedule(cmd) => schedules::command(g, cmd).await,
        Command::Scheduler => {
            let (record, dispatch) = connect(g, WorkerConfig::default().lease).await?;
            let stop = CancellationToken::new();
            tokio::spawn(signal_shutdown(stop.clone()));
            eprintln!("scheduler: firing the schedules of queue `{}`", g.queue);
            crate::schedule::run(record, dispatch, stop, false).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry {
            batch,
            max_attempts,
        } => {
            let batch = manifest::parse_batch(&batch)?;
            let (record, dispatch) = connect(g, WorkerConfig::default().lease).await?;
            let ids = record.retry_failed(batch, max_attempts.max(1)).await?;
            // Back in the batch's lane of each job's priority.
            let placed = record.placement(&ids).await?;
            crate::dispatch::enqueue_placed(dispatch.as_ref(), &placed).await?;
            println!("re-queued {} failed job(s) of {batch}", ids.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Manifest {
            batch,
            format,
            output,
            expires_secs,
        } => {
            let batch = manifest::parse_batch(&batch)?;
            let record = connect_record(g, !g.no_migrate).await?;
            let store = store::open(&g.store).await?;
            let expires = Duration::from_secs(expires_secs);
            match output {
                Some(path) => {
                    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
                    manifest::write(
                        record.as_ref(),
                        store.as_ref(),
                        batch,
                        &format,
                        expires,
                        &mut file,
                    )
                    .await
                }
                None => {
                    let mut out = std::io::stdout().lock();
                    manifest::write(
                        record.as_ref(),
                        store.as_ref(),
                        batch,
                        &format,
                        expires,
                        &mut out,
                    )
                    .await
                }
            }
        }
        Command::Bench(args) => crate::bench::run(g, args).await,
    }
}

/// The record named by `DATABASE_URL` (default: SQLite in `./renderq.db`).
pub async fn connect_record(g: &Global, migrate: bool) -> Result<Arc<dyn Record>> {
    Ok(Database::open(g.database_url.as_deref(), migrate)
        .await?
        .record())
}

/// The record and the dispatch: Redis when `REDIS_URL` is set, else the database.
pub async fn connect(g: &Global, lease: Duration) -> Result<(Arc<dyn Record>, Arc<dyn Dispatch>)> {
    Ok(backend::open(
        g.database_url.as_deref(),
        g.redis_url.as_deref(),
        &g.queue,
        lease,
        !g.no_migrate,
    )
    .await?)
}

/// Reads and validates a submit file (JSON Lines, or CSV with a template) before
/// anything touches a server. Refused input is reported here and becomes
/// `Err(exit code 1)`.
async fn read_file(args: &SubmitArgs) -> Result<std::result::Result<Vec<NewJob>, ExitCode>> {
    let limits = Limits::default();
    let file = &args.file;
    let path = file.to_path_buf();
    let catalogue = args.catalogue()?;
    let defaults = args.defaults()?;
    let read = tokio::task::spawn_blocking(move || match catalogue {
        Some(c) => c.read(&path, &limits),
        None => submit::read_jsonl_with(&path, &limits, &defaults),
    });
    match read.await? {
        Ok(jobs) => Ok(Ok(jobs)),
        Err(e @ (SubmitError::Invalid { .. } | SubmitError::TooLarge(_) | SubmitError::Empty)) => {
            eprintln!("error: {}: {e}", file.display());
            Ok(Err(ExitCode::from(1)))
        }
        Err(e) => Err(e.into()),
    }
}

/// The batch's name: given, or the file's name.
fn batch_name(args: &SubmitArgs) -> String {
    args.name.clone().unwrap_or_else(|| {
        args.file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "batch".into())
    })
}

/// Checks `--webhook` before anything is read or queued: refused input, exit 1.
fn check_webhook(args: &SubmitArgs) -> Option<ExitCode> {
    let url = args.webhook.as_ref()?;
    let e = crate::webhook::validate(url).err()?;
    eprintln!("error: {e}");
    Some(ExitCode::from(1))
}

async fn submit_cmd(g: &Global, args: SubmitArgs) -> Result<ExitCode> {
    if let Some(code) = check_webhook(&args) {
        return Ok(code);
    }
    let jobs = match read_file(&args).await? {
        Ok(jobs) => jobs,
        Err(code) => return Ok(code),
    };
    let (record, dispatch) = connect(g, WorkerConfig::default().lease).await?;
    let name = batch_name(&args);
    let started = std::time::Instant::now();
    let done = submit::submit_with_webhook(
        record.as_ref(),
        dispatch.as_ref(),
        &name,
        &jobs,
        args.max_attempts,
        args.webhook.as_deref(),
    )
    .await?;
    eprintln!(
        "queued {} jobs on `{}` in {:.2?}{}",
        done.jobs,
        g.queue,
        started.elapsed(),
        if done.duplicates > 0 {
            format!(
                " ({} ids existed already and were not queued again)",
                done.duplicates
            )
        } else {
            String::new()
        }
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({"batch_id": done.batch.to_string(), "jobs": done.jobs})
        );
    } else {
        println!("{}", done.batch);
    }
    Ok(ExitCode::SUCCESS)
}

async fn worker_cmd(g: &Global, args: WorkerArgs) -> Result<ExitCode> {
    let cfg = args.pipeline.config(args.max_attempts)?;
    let (record, dispatch) = connect(g, cfg.lease).await?;
    let (scheduler_record, scheduler_dispatch) = (record.clone(), dispatch.clone());
    let store = store::open(&g.store).await?;
    let worker = Worker::new(
        cfg,
        record,
        dispatch,
        Arc::from(store),
        args.pipeline.renderers()?,
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    let scheduler = args.scheduler.then(|| {
        tokio::spawn(crate::schedule::run(
            scheduler_record,
            scheduler_dispatch,
            shutdown.clone(),
            true,
        ))
    });
    worker.run(shutdown).await;
    if let Some(s) = scheduler {
        let _ = s.await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Cancels `token` on SIGTERM or SIGINT.
pub async fn signal_shutdown(token: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
    token.cancel();
}
