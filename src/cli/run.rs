//! `renderq run FILE`: submit, work and wait in one process, then say where the images
//! are and write a contact sheet. The one-command way to render a file on one machine.

use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::Result;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{Global, PipelineArgs, SubmitArgs, connect, signal_shutdown, submit::read_file, watch};
use crate::{
    sheet,
    store::{self, Location},
    submit,
    worker::Worker,
};

/// `renderq run FILE`: a submit and a worker in one process.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The file and how it becomes jobs.
    #[command(flatten)]
    pub submit: SubmitArgs,
    /// How the in-process worker runs.
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

pub async fn run(g: &Global, args: RunArgs) -> Result<ExitCode> {
    if let Some(code) = args.submit.check_webhook() {
        return Ok(code);
    }
    let jobs = match read_file(&args.submit.file, &args.submit.options).await? {
        Ok(jobs) => jobs,
        Err(code) => return Ok(code),
    };
    let cfg = args.pipeline.config(args.submit.options.max_attempts)?;
    let renderers = args.pipeline.renderers()?;
    let (record, dispatch) = connect(g, cfg.lease).await?;
    let store: Arc<dyn store::Store> = Arc::from(store::open(&g.store).await?);
    let name = args.submit.batch_name();
    let done = submit::submit_with_webhook(
        record.as_ref(),
        dispatch.as_ref(),
        &name,
        &jobs,
        args.submit.options.max_attempts,
        args.submit.webhook.as_deref(),
    )
    .await?;
    drop(jobs);
    eprintln!("queued {} jobs as batch {}", done.jobs, done.batch);

    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    let worker = Worker::new(cfg, record.clone(), dispatch, store.clone(), renderers);
    let working = tokio::spawn(worker.run(shutdown.clone()));
    let batch = done.batch.to_string();
    let code = tokio::select! {
        code = watch::wait(record.as_ref(), &batch, Duration::from_millis(250)) => Some(code?),
        _ = shutdown.cancelled() => None,
    };
    shutdown.cancel();
    working.await?;
    let Some(code) = code else {
        eprintln!(
            "interrupted: what was not rendered stays queued. Resume with `renderq worker`; \
             follow with `renderq wait {batch}`"
        );
        return Ok(ExitCode::from(130));
    };

    let rows = record.jobs_of_batch(done.batch).await?;
    if rows.iter().any(|r| r.state == crate::job::JobState::Failed) {
        eprintln!("{}", watch::failed_jobs(record.as_ref(), done.batch).await?);
    }
    let html = sheet::contact_sheet(&format!("{name} ({batch})"), &rows, |k| store.url(k));
    let local = Location::parse(&g.store)?.is_local();
    let sheet_path = if !local {
        std::path::PathBuf::from(format!("renderq-{batch}-contact-sheet.html"))
    } else {
        std::path::Path::new(&g.store)
            .join(&batch)
            .join("contact-sheet.html")
    };
    if let Some(dir) = sheet_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&sheet_path, html)?;
    let sheet_abs = std::path::absolute(&sheet_path).unwrap_or(sheet_path);
    let stored = rows.iter().filter(|r| r.output_key.is_some()).count();
    eprintln!();
    if !local {
        eprintln!("images:        {stored} in {}", g.store);
    } else {
        eprintln!(
            "images:        {stored} under {}/ (the batch's own folder: {batch}/)",
            g.store.trim_end_matches('/')
        );
    }
    eprintln!("contact sheet: file://{}", sheet_abs.display());
    eprintln!("status:        renderq status {batch}");
    Ok(code)
}
