//! `renderq bench`: submit time and drain throughput with rendering taken out (`noop`,
//! tiny images), every state recorded, and the share of the time each lane was busy
//! (with `--delay-ms` standing in for a device). Prints figures; asserts nothing.

use std::{
    io::Write,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::{
    cli::{Global, connect},
    input,
    job::Limits,
    render::{NoopRenderer, Renderers},
    store, submit,
    worker::{Worker, WorkerConfig},
};

/// `renderq bench`: how many jobs, how large, and the worker's sizes.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Jobs to submit and drain
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Image side in pixels
    #[arg(long, default_value_t = 8)]
    pub size: u32,
    /// Worker concurrency
    #[arg(long, default_value_t = 2048)]
    pub concurrency: usize,
    /// Jobs per device call
    #[arg(long, default_value_t = 256)]
    pub max_batch: usize,
    /// Milliseconds each noop device call takes, standing in for a device
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Calls the noop model takes at once, as that many devices would
    #[arg(long, default_value_t = 1)]
    pub lanes: usize,
    /// Measure the HTTP API instead: POST /v1/batches of --jobs jobs (3 times), then
    /// GET /v1/jobs/{id}
    #[arg(long)]
    pub api: bool,
    /// --api: clients reading at once
    #[arg(long, default_value_t = 32)]
    pub api_clients: usize,
    /// --api: seconds of reads
    #[arg(long, default_value_t = 5.0)]
    pub api_secs: f64,
}

pub async fn run(g: &Global, args: BenchArgs) -> Result<ExitCode> {
    if args.api {
        return super::bench_api::run(g, &args).await;
    }
    // A queue of its own, so the bench never mixes with real work.
    let mut g = g.clone();
    g.queue = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (record, dispatch) = connect(&g, WorkerConfig::default().lease).await?;
    println!("queue: {}", g.queue);
    let store: Arc<dyn store::Store> = Arc::from(store::open(&g.store).await?);

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for i in 0..args.jobs {
            writeln!(
                f,
                r#"{{"prompt":"bench job {i}","model":"noop","width":{s},"height":{s}}}"#,
                s = args.size
            )?;
        }
    }
    let t = Instant::now();
    let jobs = input::read_jsonl(&path, &Limits::default())?;
    let parsed = t.elapsed();
    let done = submit::submit(record.as_ref(), dispatch.as_ref(), "bench", &jobs, 3).await?;
    let submitted = t.elapsed();
    drop(jobs);
    println!(
        "submit: {} jobs in {:.2} s ({:.0} jobs/s; parse and validate {:.2} s, write and dispatch {:.2} s)",
        done.jobs,
        submitted.as_secs_f64(),
        done.jobs as f64 / submitted.as_secs_f64(),
        parsed.as_secs_f64(),
        (submitted - parsed).as_secs_f64()
    );

    let cfg = WorkerConfig {
        concurrency: args.concurrency,
        max_batch: args.max_batch,
        ..WorkerConfig::default()
    };
    let mut renderers = Renderers::builtin(0);
    let noop = NoopRenderer::new(args.delay_ms).with_lanes(args.lanes);
    renderers.insert("noop", Arc::new(noop));
    let worker = Worker::new(cfg, record.clone(), dispatch.clone(), store, renderers);
    let sizer = worker.sizer();
    let shutdown = CancellationToken::new();
    let t = Instant::now();
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    // Polls the batch's finished mark, one row: counting the batch's jobs (as
    // `progress` does) took Postgres ~90 ms per poll at 200,000 jobs, time taken
    // from the drain being measured.
    while record.batch_finished_at(done.batch).await?.is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    let p = record
        .progress(done.batch)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the bench batch vanished"))?;
    println!(
        "drain: {} jobs in {secs:.2} s ({:.0} jobs/s; one worker, concurrency {}, max batch {}, {}x{} noop, {} ms per call, {} lane(s))",
        p.total,
        p.total as f64 / secs,
        args.concurrency,
        args.max_batch,
        args.size,
        args.size,
        args.delay_ms,
        args.lanes
    );
    for lane in sizer.lane_use() {
        println!(
            "lane {}: busy {:.1} % of {:.2} s ({} slot(s), {} calls, {:.1} jobs per call)",
            lane.label,
            100.0 * lane.duty(),
            lane.span.as_secs_f64(),
            lane.slots,
            lane.calls,
            lane.jobs as f64 / lane.calls.max(1) as f64
        );
    }
    shutdown.cancel();
    handle.await?;
    // The queue was the bench's own: leave nothing of it in Redis.
    dispatch.discard().await?;
    if p.succeeded != p.total {
        anyhow::bail!(
            "not every job succeeded: {} of {} ({} failed, {} cancelled)",
            p.succeeded,
            p.total,
            p.failed,
            p.cancelled
        );
    }
    Ok(ExitCode::SUCCESS)
}
