//! `renderq schedule add | list | remove`.

use std::process::ExitCode;

use anyhow::{Result, bail};
use chrono::Utc;
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use super::{Global, connect, connect_record, signal_shutdown};
use crate::{
    input::{self, SubmitOptions},
    job::Limits,
    schedule::{Schedule, parse_cron, parse_timezone},
    store::Location,
    worker::WorkerConfig,
};

#[derive(Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Add a schedule: FILE is read and submitted as a new batch at every firing
    Add(Box<AddArgs>),
    /// List schedules with their next firing
    List,
    /// Remove a schedule (its batches stay)
    Remove { name: String },
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// The schedule's name (batches are named `<name>@<firing time>`)
    #[arg(value_name = "NAME")]
    pub schedule_name: String,
    /// Five fields (minute hour day month weekday), or six with leading seconds
    #[arg(long)]
    pub cron: String,
    /// The time zone the expression is read in
    #[arg(long, default_value = "UTC")]
    pub tz: String,
    /// The file read at every firing: a local path, or s3://bucket/key
    pub file: String,
    #[command(flatten)]
    pub options: SubmitOptions,
}

/// `renderq scheduler`: fires due schedules until SIGTERM / SIGINT.
pub async fn scheduler(g: &Global, listen: super::listen::ListenArgs) -> Result<ExitCode> {
    let health = listen.start().await?;
    let (record, dispatch) = connect(g, WorkerConfig::default().lease).await?;
    crate::worker::probe_record_and_dispatch(&health, record.clone(), dispatch.clone());
    let stop = CancellationToken::new();
    tokio::spawn(signal_shutdown(stop.clone()));
    eprintln!("scheduler: firing the schedules of queue `{}`", g.queue);
    let firing = crate::scheduler::run(record, dispatch, stop, false);
    crate::telemetry::watched(health.watch("scheduler"), firing).await;
    Ok(ExitCode::SUCCESS)
}

pub async fn command(g: &Global, cmd: ScheduleCommand) -> Result<ExitCode> {
    let record = connect_record(g, !g.no_migrate).await?;
    match cmd {
        ScheduleCommand::Add(args) => {
            let cron = parse_cron(&args.cron).map_err(|e| anyhow::anyhow!("--cron {e}"))?;
            parse_timezone(&args.tz).map_err(|e| anyhow::anyhow!("--tz {e}"))?;
            let options = args.options.clone();
            // A broken schedule is refused now, not at 2 a.m.: a local file is read and
            // checked like a submit (a file in a store is checked at each firing).
            let file = match Location::parse(&args.file)? {
                Location::Local(path) => {
                    let path = std::path::absolute(path)?;
                    if let Err(e) = input::read(&path, &options, &Limits::default()) {
                        eprintln!("error: {}: {e}", args.file);
                        return Ok(ExitCode::from(1));
                    }
                    path.display().to_string()
                }
                Location::S3 { .. } => args.file.clone(),
            };
            let schedule = Schedule {
                name: args.schedule_name.clone(),
                cron: args.cron.clone(),
                timezone: args.tz.clone(),
                file,
                queue: g.queue.clone(),
                options,
                last_fired_for: None,
                created_at: Utc::now(),
            };
            if !record.add_schedule(&schedule).await? {
                bail!(
                    "a schedule named `{}` exists; remove it first",
                    args.schedule_name
                );
            }
            let tz = parse_timezone(&args.tz).map_err(anyhow::Error::msg)?;
            let next = cron
                .find_next_occurrence(&Utc::now().with_timezone(&tz), false)
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|_| "never".into());
            println!(
                "schedule `{}` added; next firing {next}",
                args.schedule_name
            );
            Ok(ExitCode::SUCCESS)
        }
        ScheduleCommand::List => {
            let schedules = record.schedules().await?;
            if schedules.is_empty() {
                println!("no schedules");
            }
            for s in schedules {
                let next = s
                    .next_after(Utc::now())
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "never".into());
                let last = s
                    .last_fired_for
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "never".into());
                println!(
                    "{}  '{}' {}  queue {}  file {}  next {next}  last {last}",
                    s.name, s.cron, s.timezone, s.queue, s.file
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ScheduleCommand::Remove { name } => {
            if record.remove_schedule(&name).await? {
                println!("schedule `{name}` removed");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("error: no schedule `{name}`");
                Ok(ExitCode::from(2))
            }
        }
    }
}
