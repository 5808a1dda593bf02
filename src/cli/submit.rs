//! `renderq submit FILE`: validate a file and queue it as one batch.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Args;

use super::{Global, connect};
use crate::{
    input::{self, InputError, SubmitOptions},
    job::{Limits, NewJob},
    submit,
    worker::WorkerConfig,
};

/// `renderq submit FILE`: the file, the batch's name and webhook, and the submit options.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// JSON Lines file, one job per line (or CSV, with --template)
    pub file: PathBuf,
    /// A name for the batch (default: the file name)
    #[arg(long)]
    pub name: Option<String>,
    /// Print {"batch_id": …, "jobs": N} instead of the batch id
    #[arg(long)]
    pub json: bool,
    /// POST a signed JSON summary here when the batch finishes (Standard Webhooks
    /// signature under RENDERQ_WEBHOOK_SECRET, which must be set)
    #[arg(long)]
    pub webhook: Option<String>,
    /// How the file becomes jobs.
    #[command(flatten)]
    pub options: SubmitOptions,
}

/// Reads and validates a submit file (JSON Lines, or CSV with a template) before
/// anything touches a server. Refused input is reported here and becomes
/// `Err(exit code 1)`.
pub(super) async fn read_file(
    file: &std::path::Path,
    options: &SubmitOptions,
) -> Result<std::result::Result<Vec<NewJob>, ExitCode>> {
    let (path, options) = (file.to_path_buf(), options.clone());
    let read =
        tokio::task::spawn_blocking(move || input::read(&path, &options, &Limits::default()));
    match read.await? {
        Ok(jobs) => Ok(Ok(jobs)),
        Err(e @ InputError::Io { .. }) => Err(e.into()),
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            Ok(Err(ExitCode::from(1)))
        }
    }
}

impl SubmitArgs {
    /// The batch's name: given, or the file's name.
    pub(super) fn batch_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "batch".into())
        })
    }

    /// Checks `--webhook` before anything is read or queued: refused input, exit 1.
    pub(super) fn check_webhook(&self) -> Option<ExitCode> {
        let url = self.webhook.as_ref()?;
        let e = crate::webhook::validate(url).err()?;
        eprintln!("error: {e}");
        Some(ExitCode::from(1))
    }
}

pub async fn command(g: &Global, args: SubmitArgs) -> Result<ExitCode> {
    if let Some(code) = args.check_webhook() {
        return Ok(code);
    }
    let jobs = match read_file(&args.file, &args.options).await? {
        Ok(jobs) => jobs,
        Err(code) => return Ok(code),
    };
    let (record, dispatch) = connect(g, WorkerConfig::default().lease).await?;
    let name = args.batch_name();
    let started = std::time::Instant::now();
    let done = submit::submit_with_webhook(
        record.as_ref(),
        dispatch.as_ref(),
        &name,
        &jobs,
        args.options.max_attempts,
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
