//! Cron schedules: a schedule turns a file into a fresh batch at every firing.
//!
//! Expressions are standard five-field cron with an optional leading seconds field,
//! in a time zone per schedule (parsed by `croner`, zones by `chrono-tz`). Each firing
//! creates one batch with `schedule` = the name and `scheduled_for` = the firing time;
//! the unique constraint on those two makes a double firing impossible however many
//! schedulers run. A scheduler that was down fires only the most recent missed firing.

use std::{str::FromStr, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    catalogue::{Catalogue, JobDefaults, Template},
    db::{DbError, NewJob, Record},
    dispatch::Dispatch,
    job::{BatchId, ImageFormat, Limits},
    submit::{self, SubmitError},
};

/// How a schedule's file becomes jobs: the submit options, stored with the schedule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubmitOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default = "one")]
    pub variants: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
    #[serde(default = "three")]
    pub max_attempts: i32,
}

fn one() -> u32 {
    1
}

fn three() -> i32 {
    3
}

impl SubmitOptions {
    pub fn defaults(&self) -> JobDefaults {
        JobDefaults {
            width: self.width,
            height: self.height,
            model: self.model.clone(),
            steps: self.steps,
            format: self.format,
        }
    }

    /// The catalogue, when the file is CSV (a template is given).
    pub fn catalogue(&self) -> Result<Option<Catalogue>, String> {
        let Some(template) = &self.template else {
            return Ok(None);
        };
        Ok(Some(Catalogue {
            template: Template::parse(template).map_err(|e| format!("--template: {e}"))?,
            variants: self.variants,
            key: self
                .key
                .as_deref()
                .map(Template::parse)
                .transpose()
                .map_err(|e| format!("--key: {e}"))?,
            defaults: self.defaults(),
        }))
    }

    /// Reads a local file into jobs, as `renderq submit` would.
    pub fn read(
        &self,
        path: &std::path::Path,
        limits: &Limits,
    ) -> Result<Vec<NewJob>, SubmitError> {
        match self.catalogue().map_err(SubmitError::TooLarge)? {
            Some(c) => c.read(path, limits),
            None => submit::read_jsonl_with(path, limits, &self.defaults()),
        }
    }
}

/// A stored schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    /// A local path or `s3://bucket/key`, read at each firing.
    pub file: String,
    pub queue: String,
    pub options: SubmitOptions,
    pub last_fired_for: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Parses a cron expression: five fields, or six with a leading seconds field.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let fields = expr.split_whitespace().count();
    if fields != 5 && fields != 6 {
        return Err(format!(
            "`{expr}` has {fields} fields; use five (minute hour day month weekday) \
             or six with a leading seconds field"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| format!("`{expr}`: {e}"))
}

pub fn parse_timezone(tz: &str) -> Result<Tz, String> {
    Tz::from_str(tz).map_err(|_| format!("`{tz}` is not a time zone (e.g. UTC, Europe/Paris)"))
}

impl Schedule {
    fn cron_and_tz(&self) -> Result<(Cron, Tz), String> {
        Ok((parse_cron(&self.cron)?, parse_timezone(&self.timezone)?))
    }

    /// The next firing after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (cron, tz) = self.cron_and_tz().ok()?;
        cron.find_next_occurrence(&after.with_timezone(&tz), false)
            .ok()
            .map(|t| whole_seconds(t.with_timezone(&Utc)))
    }

    /// The firing due at `now`, if one is: the most recent firing at or before `now`
    /// that is later than the last one fired (and not before the schedule existed).
    /// Also says how many earlier firings were missed and are skipped.
    pub fn due(&self, now: DateTime<Utc>) -> Option<(DateTime<Utc>, u32)> {
        let (cron, tz) = self.cron_and_tz().ok()?;
        let latest = whole_seconds(
            cron.find_previous_occurrence(&now.with_timezone(&tz), true)
                .ok()?
                .with_timezone(&Utc),
        );
        let since = self.last_fired_for.unwrap_or(self.created_at);
        if latest <= since || (self.last_fired_for.is_none() && latest < self.created_at) {
            return None;
        }
        let mut skipped = 0;
        let mut t = since;
        while let Some(next) = self.next_after(t) {
            if next >= latest || skipped >= 10_000 {
                break;
            }
            skipped += 1;
            t = next;
        }
        Some((latest, skipped))
    }
}

/// Firing times are whole seconds: the key of a firing must not depend on when,
/// within that second, a scheduler looked.
fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::Timelike;
    t.with_nanosecond(0).unwrap_or(t)
}

#[derive(Debug, thiserror::Error)]
pub enum FireError {
    #[error("reading {file}: {reason}")]
    File { file: String, reason: String },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}")]
    Dispatch(String),
}

/// Fires one schedule for `scheduled_for`: reads its file, and writes and dispatches a
/// batch, unless that firing's batch exists already (another scheduler won).
pub async fn fire(
    record: &dyn Record,
    dispatch: &dyn Dispatch,
    schedule: &Schedule,
    scheduled_for: DateTime<Utc>,
) -> Result<Option<BatchId>, FireError> {
    let file_err = |reason: String| FireError::File {
        file: schedule.file.clone(),
        reason,
    };
    let local = fetch(&schedule.file).await.map_err(file_err)?;
    let options = schedule.options.clone();
    let path = local.path().to_path_buf();
    let jobs = tokio::task::spawn_blocking(move || options.read(&path, &Limits::default()))
        .await
        .map_err(|e| file_err(e.to_string()))?
        .map_err(|e| file_err(e.to_string()))?;
    let name = format!(
        "{}@{}",
        schedule.name,
        scheduled_for.format("%Y-%m-%dT%H:%M:%SZ")
    );
    let created = record
        .create_batch_for(
            &name,
            &schedule.queue,
            &jobs,
            schedule.options.max_attempts,
            Some((&schedule.name, scheduled_for)),
        )
        .await?;
    record.mark_fired(&schedule.name, scheduled_for).await?;
    let Some((batch, ids)) = created else {
        return Ok(None);
    };
    let jobs = submit::placed(batch, &jobs, &ids);
    crate::dispatch::enqueue_placed(dispatch, &jobs)
        .await
        .map_err(|e| FireError::Dispatch(e.to_string()))?;
    Ok(Some(batch))
}

/// A local copy of the schedule's file: the path itself, or an S3 object downloaded.
enum Local {
    Path(std::path::PathBuf),
    Temp(tempfile::NamedTempFile),
}

impl Local {
    fn path(&self) -> &std::path::Path {
        match self {
            Local::Path(p) => p,
            Local::Temp(t) => t.path(),
        }
    }
}

async fn fetch(file: &str) -> Result<Local, String> {
    let Some(rest) = file.strip_prefix("s3://") else {
        return Ok(Local::Path(file.into()));
    };
    let (bucket, key) = rest
        .split_once('/')
        .ok_or_else(|| format!("`{file}` names no object: use s3://bucket/key"))?;
    let store = crate::store::S3Store::from_env(bucket, "").await;
    // A schedule never reads more than a submit of a local file may hold.
    let cap = Limits::default().max_file_bytes;
    download_manifest(&store, key, cap).await.map(Local::Temp)
}

/// Downloads a schedule's manifest from the store's bucket into a temporary file
/// (its suffix, `.csv` or `.jsonl`, follows the key), refusing an object over `cap`
/// bytes by its declared size first, then as it arrives.
pub async fn download_manifest(
    store: &crate::store::S3Store,
    key: &str,
    cap: u64,
) -> Result<tempfile::NamedTempFile, String> {
    let file = format!("s3://{}/{key}", store.bucket());
    let object = store
        .client()
        .get_object()
        .bucket(store.bucket())
        .key(key)
        .send()
        .await
        .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(&e).to_string())?;
    let too_big = || format!("`{file}` is over the limit of {cap} bytes per submit; split it");
    if object.content_length().is_some_and(|n| n as u64 > cap) {
        return Err(too_big());
    }
    let suffix = if key.to_ascii_lowercase().ends_with(".csv") {
        ".csv"
    } else {
        ".jsonl"
    };
    let mut temp = tempfile::Builder::new()
        .suffix(suffix)
        .tempfile()
        .map_err(|e| e.to_string())?;
    let mut body = object.body;
    let mut read = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        read += chunk.len() as u64;
        if read > cap {
            return Err(too_big());
        }
        std::io::Write::write_all(&mut temp, &chunk).map_err(|e| e.to_string())?;
    }
    Ok(temp)
}

/// Fires due schedules until `stop`: every second it looks at every schedule. Run it
/// alone (`renderq scheduler`) or inside workers (`--scheduler`, one leader at a time).
pub async fn run(
    record: Arc<dyn Record>,
    dispatch: Arc<dyn Dispatch>,
    stop: CancellationToken,
    lead: bool,
) {
    let mut leadership = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
        if lead && leadership.is_none() {
            match record.lead("renderq-scheduler").await {
                Ok(Some(l)) => leadership = Some(l),
                _ => continue,
            }
        }
        if let Err(e) = tick(record.as_ref(), dispatch.as_ref(), Utc::now()).await {
            warn!("scheduler: {e}");
            leadership = None;
        }
    }
}

/// One look at every schedule of the dispatch's queue.
pub async fn tick(
    record: &dyn Record,
    dispatch: &dyn Dispatch,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    for schedule in record.schedules().await? {
        if schedule.queue != dispatch.queue() {
            continue;
        }
        let Some((at, skipped)) = schedule.due(now) else {
            continue;
        };
        if skipped > 0 {
            warn!(
                schedule = schedule.name,
                skipped, "the scheduler was down: firing only the most recent missed time, {at}"
            );
        }
        match fire(record, dispatch, &schedule, at).await {
            Ok(Some(batch)) => {
                info!(schedule = schedule.name, %batch, scheduled_for = %at, "fired")
            }
            Ok(None) => {} // another scheduler fired it
            Err(e) => warn!(schedule = schedule.name, scheduled_for = %at, "firing failed: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, tz: &str, created: &str, last: Option<&str>) -> Schedule {
        Schedule {
            name: "n".into(),
            cron: cron.into(),
            timezone: tz.into(),
            file: "f".into(),
            queue: "q".into(),
            options: SubmitOptions::default(),
            last_fired_for: last.map(|l| l.parse().unwrap()),
            created_at: created.parse().unwrap(),
        }
    }

    #[test]
    fn five_and_six_fields_parse_others_are_refused() {
        assert!(parse_cron("0 2 * * *").is_ok());
        assert!(parse_cron("*/10 0 2 * * *").is_ok());
        assert!(parse_cron("0 2 * *").unwrap_err().contains("4 fields"));
        assert!(parse_cron("0 25 * * *").is_err());
        assert!(parse_timezone("Europe/Paris").is_ok());
        assert!(parse_timezone("Mars/Olympus").is_err());
    }

    #[test]
    fn a_scheduler_that_was_down_fires_only_the_latest_missed_time() {
        let s = schedule(
            "0 * * * *",
            "UTC",
            "2026-11-01T00:00:00Z",
            Some("2026-11-28T10:00:00Z"),
        );
        let now: DateTime<Utc> = "2026-11-28T13:20:00Z".parse().unwrap();
        let (at, skipped) = s.due(now).unwrap();
        assert_eq!(at, "2026-11-28T13:00:00Z".parse::<DateTime<Utc>>().unwrap());
        assert_eq!(skipped, 2, "11:00 and 12:00 were missed");
        let fired = Schedule {
            last_fired_for: Some(at),
            ..s
        };
        assert!(fired.due(now).is_none(), "nothing more is due");
    }

    #[test]
    fn time_zones_move_the_firing() {
        let s = schedule("0 2 * * *", "Europe/Paris", "2026-11-27T00:00:00Z", None);
        let now: DateTime<Utc> = "2026-11-28T03:00:00Z".parse().unwrap();
        // 02:00 in Paris is 01:00 UTC in November.
        assert_eq!(
            s.due(now).unwrap().0,
            "2026-11-28T01:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let fresh = schedule("0 2 * * *", "UTC", "2026-11-28T02:30:00Z", None);
        assert!(
            fresh.due("2026-11-28T02:45:00Z".parse().unwrap()).is_none(),
            "not before it existed"
        );
    }
}
