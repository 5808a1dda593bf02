//! `renderq schedule add | list | remove`.

use std::process::ExitCode;

use anyhow::{Result, bail};
use chrono::Utc;
use clap::{Args, Subcommand};

use super::{Global, SubmitArgs, connect_record};
use crate::{
    job::Limits,
    schedule::{Schedule, SubmitOptions, parse_cron, parse_timezone},
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
    #[command(flatten)]
    pub submit: SubmitArgs,
}

pub async fn command(g: &Global, cmd: ScheduleCommand) -> Result<ExitCode> {
    let record = connect_record(g, !g.no_migrate).await?;
    match cmd {
        ScheduleCommand::Add(args) => {
            let cron = parse_cron(&args.cron).map_err(|e| anyhow::anyhow!("--cron {e}"))?;
            parse_timezone(&args.tz).map_err(|e| anyhow::anyhow!("--tz {e}"))?;
            let s = &args.submit;
            let options = SubmitOptions {
                template: s.template.clone(),
                variants: s.variants,
                key: s.key.clone(),
                width: s.width,
                height: s.height,
                model: s.model.clone(),
                steps: s.steps,
                format: s.defaults()?.format,
                max_attempts: s.max_attempts,
            };
            let file = s.file.display().to_string();
            // A broken schedule is refused now, not at 2 a.m.: a local file is read and
            // checked like a submit (an s3:// file is checked at each firing).
            if !file.starts_with("s3://") {
                let path = std::path::absolute(&s.file)?;
                if let Err(e) = options.read(&path, &Limits::default()) {
                    eprintln!("error: {}: {e}", s.file.display());
                    return Ok(ExitCode::from(1));
                }
            }
            let file = if file.starts_with("s3://") {
                file
            } else {
                std::path::absolute(&s.file)?.display().to_string()
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
