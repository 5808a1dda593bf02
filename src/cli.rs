//! The `renderq` command line: parses configuration (flags, then environment, then
//! defaults) and calls the library.

mod bench;
mod bench_api;
mod listen;
mod logging;
mod manifest;
mod run;
mod schedules;
mod serve;
mod submit;
mod token;
mod watch;
mod worker;

use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

pub use self::{
    bench::BenchArgs,
    manifest::ManifestArgs,
    run::RunArgs,
    submit::SubmitArgs,
    worker::{MAX_BATCH, MAX_CONCURRENCY, PipelineArgs, WorkerArgs},
};
use crate::{
    backend::{self, Database},
    db::Record,
    dispatch::Dispatch,
    job::BatchId,
};

#[derive(Parser, Debug)]
#[command(
    name = "renderq",
    version,
    about = "Bulk text-to-image rendering: submit, work, watch"
)]
/// The `renderq` command line: where the parts are, and the command.
pub struct Cli {
    /// Where the record, dispatch, store and queue are.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the parts are. Each is a flag and an environment variable.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The record: postgres://user:password@host/db or sqlite://path [default: sqlite://renderq.db]
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Dispatch: redis://host:6379, redis+sentinel://sentinel:26379[,…]/<master name>, or
    /// redis+cluster://node:6379[,…] [default: none, dispatch through the database]
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

/// The commands, one file each under `cli/`.
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
        /// The batch id, as submit printed it.
        batch: String,
        /// How often to poll the record
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
    },
    /// Cancel a job, or every unfinished job of a batch
    Cancel {
        /// A job id or a batch id
        id: String,
    },
    /// Put a batch's failed jobs back in the queue
    Retry {
        /// The batch id, as submit printed it.
        batch: String,
        /// Attempts each job gets anew
        #[arg(long, default_value_t = 3)]
        max_attempts: i32,
    },
    /// Write a batch's results (CSV or JSON Lines): job id, source columns, state,
    /// object key and URL, seed, error
    Manifest(ManifestArgs),
    /// Submit, work and wait in one process, then write a contact sheet
    Run(RunArgs),
    /// Cron schedules that turn a file into a batch at each firing
    #[command(subcommand)]
    Schedule(schedules::ScheduleCommand),
    /// Fire due schedules until SIGTERM / SIGINT
    Scheduler(listen::ListenArgs),
    /// Measure drain throughput and submit time (noop model, tiny images)
    Bench(BenchArgs),
    /// Serve the HTTP API (/v1) until SIGTERM / SIGINT
    Serve(serve::ServeArgs),
    /// The HTTP API's bearer tokens
    #[command(subcommand)]
    Token(token::TokenCommand),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init();
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

/// Runs one parsed command; the exit code says how it ended (0 done, 1 refused input or failed jobs, 2 an error).
pub async fn run(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Migrate => {
            let record = connect_record(g, false).await?;
            record.migrate().await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit(args) => submit::command(g, args).await,
        Command::Worker(args) => worker::command(g, args).await,
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
        Command::Scheduler(listen) => schedules::scheduler(g, listen).await,
        Command::Retry {
            batch,
            max_attempts,
        } => watch::retry(g, &batch, max_attempts).await,
        Command::Manifest(args) => manifest::command(g, args).await,
        Command::Bench(args) => bench::run(g, args).await,
        Command::Serve(args) => serve::command(g, args).await,
        Command::Token(cmd) => token::command(g, cmd).await,
    }
}

/// A batch id as the commands take it, or an error naming the text.
fn parse_batch(text: &str) -> Result<BatchId> {
    text.parse()
        .with_context(|| format!("`{text}` is not a batch id (a UUID, as submit prints)"))
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
