//! Row mappers shared by both backends. Each backend says how it stores an id, a time
//! and a JSON value ([`Columns`]); what a row of `jobs`, `batch_progress` or
//! `schedules` means is written once, here.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::{DbError, FailedJob, JobRow, Progress};
use crate::{
    job::{BatchId, JobId, JobState},
    schedule::Schedule,
};

/// Reading one column of a returned row, by position, in the backend's encoding.
pub(crate) trait Columns {
    fn text(&self, i: usize) -> Result<String, DbError>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, DbError>;
    fn int(&self, i: usize) -> Result<i64, DbError>;
    fn int32(&self, i: usize) -> Result<i32, DbError>;
    fn flag(&self, i: usize) -> Result<bool, DbError>;
    fn uuid(&self, i: usize) -> Result<Uuid, DbError>;
    fn opt_uuid(&self, i: usize) -> Result<Option<Uuid>, DbError>;
    fn time(&self, i: usize) -> Result<DateTime<Utc>, DbError>;
    fn opt_time(&self, i: usize) -> Result<Option<DateTime<Utc>>, DbError>;
    fn opt_json(&self, i: usize) -> Result<Option<serde_json::Value>, DbError>;
}

/// The columns every backend stores the same way.
macro_rules! plain_columns {
    () => {
        fn text(&self, i: usize) -> Result<String, DbError> {
            Ok(self.try_get(i)?)
        }
        fn opt_text(&self, i: usize) -> Result<Option<String>, DbError> {
            Ok(self.try_get(i)?)
        }
        fn int(&self, i: usize) -> Result<i64, DbError> {
            Ok(self.try_get(i)?)
        }
        fn int32(&self, i: usize) -> Result<i32, DbError> {
            Ok(self.try_get(i)?)
        }
        fn flag(&self, i: usize) -> Result<bool, DbError> {
            Ok(self.try_get(i)?)
        }
    };
}

/// Postgres: native `uuid`, `timestamptz` and `jsonb`.
impl Columns for sqlx::postgres::PgRow {
    plain_columns!();
    fn uuid(&self, i: usize) -> Result<Uuid, DbError> {
        Ok(self.try_get(i)?)
    }
    fn opt_uuid(&self, i: usize) -> Result<Option<Uuid>, DbError> {
        Ok(self.try_get(i)?)
    }
    fn time(&self, i: usize) -> Result<DateTime<Utc>, DbError> {
        Ok(self.try_get(i)?)
    }
    fn opt_time(&self, i: usize) -> Result<Option<DateTime<Utc>>, DbError> {
        Ok(self.try_get(i)?)
    }
    fn opt_json(&self, i: usize) -> Result<Option<serde_json::Value>, DbError> {
        Ok(self.try_get(i)?)
    }
}

/// SQLite: ids as text, times as Unix milliseconds, JSON as text.
impl Columns for sqlx::sqlite::SqliteRow {
    plain_columns!();
    fn uuid(&self, i: usize) -> Result<Uuid, DbError> {
        parse_uuid(&self.text(i)?)
    }
    fn opt_uuid(&self, i: usize) -> Result<Option<Uuid>, DbError> {
        self.opt_text(i)?.as_deref().map(parse_uuid).transpose()
    }
    fn time(&self, i: usize) -> Result<DateTime<Utc>, DbError> {
        Ok(from_ms(self.int(i)?))
    }
    fn opt_time(&self, i: usize) -> Result<Option<DateTime<Utc>>, DbError> {
        Ok(self.try_get::<Option<i64>, _>(i)?.map(from_ms))
    }
    fn opt_json(&self, i: usize) -> Result<Option<serde_json::Value>, DbError> {
        Ok(self
            .opt_text(i)?
            .and_then(|m| serde_json::from_str(&m).ok()))
    }
}

pub(crate) fn parse_uuid(text: &str) -> Result<Uuid, DbError> {
    Uuid::parse_str(text).map_err(|e| DbError::Invalid(format!("bad id `{text}`: {e}")))
}

/// A time stored as Unix milliseconds (SQLite).
pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The columns [`job_row`] reads, after `id`: the `SELECT` list with `{prompt}` and
/// `{metadata}` standing for the backend's JSON access to the spec.
pub(crate) const JOB_ROW: &str = "id, batch_id, state, attempt, error, output_key, seed, \
     coalesce({prompt}, ''), worker, {metadata}";

/// One job as `renderq status` reads it, from the columns of [`JOB_ROW`].
pub(crate) fn job_row(r: &impl Columns) -> Result<JobRow, DbError> {
    Ok(JobRow {
        id: JobId(r.uuid(0)?),
        batch_id: r.opt_uuid(1)?.map(BatchId),
        state: state(r, 2)?,
        attempt: r.int32(3)?,
        error: r.opt_text(4)?,
        output_key: r.opt_text(5)?,
        seed: r.int(6)? as u64,
        prompt: r.text(7)?,
        worker: r.opt_text(8)?,
        metadata: r.opt_json(9)?,
    })
}

/// The columns [`progress`] reads, as `batch_progress` names them.
pub(crate) const PROGRESS: &str =
    "batch_id, name, created_at, total, queued, running, succeeded, failed, cancelled, done";

pub(crate) fn progress(r: &impl Columns) -> Result<Progress, DbError> {
    Ok(Progress {
        batch_id: BatchId(r.uuid(0)?),
        name: r.text(1)?,
        created_at: r.time(2)?,
        total: r.int(3)?,
        queued: r.int(4)?,
        running: r.int(5)?,
        succeeded: r.int(6)?,
        failed: r.int(7)?,
        cancelled: r.int(8)?,
        done: r.flag(9)?,
    })
}

/// `id, attempt, error` of a failed job.
pub(crate) fn failed_job(r: &impl Columns) -> Result<FailedJob, DbError> {
    Ok(FailedJob {
        id: JobId(r.uuid(0)?),
        attempt: r.int32(1)?,
        error: r.opt_text(2)?,
    })
}

/// The columns [`schedule`] reads.
pub(crate) const SCHEDULE: &str =
    "name, cron, timezone, file, queue, options, last_fired_for, created_at";

pub(crate) fn schedule(r: &impl Columns) -> Result<Schedule, DbError> {
    let options = r.opt_json(5)?.unwrap_or_default();
    Ok(Schedule {
        name: r.text(0)?,
        cron: r.text(1)?,
        timezone: r.text(2)?,
        file: r.text(3)?,
        queue: r.text(4)?,
        options: serde_json::from_value(options)?,
        last_fired_for: r.opt_time(6)?,
        created_at: r.time(7)?,
    })
}

/// The `(id, batch_id)` at the start of a returned row.
pub(crate) fn job_and_batch(r: &impl Columns) -> Result<(JobId, Option<BatchId>), DbError> {
    Ok((JobId(r.uuid(0)?), r.opt_uuid(1)?.map(BatchId)))
}

/// A state column.
pub(crate) fn state(r: &impl Columns, i: usize) -> Result<JobState, DbError> {
    r.text(i)?.parse().map_err(DbError::Invalid)
}

/// The states a queue's backlog counts, in the order [`backlog_sql`] returns them.
const BACKLOG: [JobState; 3] = [JobState::Queued, JobState::Running, JobState::Retrying];

/// One count per backlog state of the queue bound as `param`, in table `jobs`: each a
/// partial-index lookup.
pub(crate) fn backlog_sql(jobs: &str, param: &str) -> String {
    let counts: Vec<String> = BACKLOG
        .iter()
        .map(|s| format!("(SELECT count(*) FROM {jobs} WHERE queue = {param} AND state = '{s}')"))
        .collect();
    format!("SELECT {}", counts.join(", "))
}

/// The row [`backlog_sql`] returns, as (state, count).
pub(crate) fn backlog(row: &impl Columns) -> Result<Vec<(JobState, i64)>, DbError> {
    BACKLOG
        .iter()
        .enumerate()
        .map(|(i, s)| Ok((*s, row.int(i)?)))
        .collect()
}
