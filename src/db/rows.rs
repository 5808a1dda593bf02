//! Row mappers shared by both backends. Each backend says how it stores an id, a time
//! and a JSON value ([`Columns`]); what a row of `jobs`, `batch_progress` or
//! `schedules` means is written once, here.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::{
    AttemptRow, BatchInfo, BatchQuery, DbError, FailedJob, JobDetail, JobQuery, JobRow, Progress,
    TokenInfo, Webhook, WorkerInfo, WorkerRow,
};
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

/// A value bound to a statement built at run time, in the backend's encoding.
pub(crate) enum Param {
    Text(String),
    Id(Uuid),
    Int(i64),
    Time(DateTime<Utc>),
}

/// How a backend spells what the paged reads need.
pub(crate) struct Dialect {
    /// The tables' prefix: `renderq.` or nothing.
    pub schema: &'static str,
    /// The spec's prompt as text.
    pub prompt: &'static str,
    /// The position of `needle` in `hay` (0 when absent): `strpos` or `instr`.
    pub position: &'static str,
    /// Parameter number `n` (from 1): `$n` or `?n`.
    pub param: fn(usize) -> String,
    /// A worker's models as one comma-separated text.
    pub models: &'static str,
}

/// Collects the parameters of a statement as its conditions are added.
struct Binds<'d> {
    dialect: &'d Dialect,
    params: Vec<Param>,
}

impl Binds<'_> {
    fn add(&mut self, p: Param) -> String {
        self.params.push(p);
        (self.dialect.param)(self.params.len())
    }
}

/// The columns [`batch_info`] reads: [`PROGRESS`]'s, then queue and finish time, its
/// jobs' first start and last finish, and its webhook.
const BATCH_INFO: &str = "b.id, b.name, b.created_at, count(j.id), \
     count(CASE WHEN j.state IN ('queued', 'retrying') THEN 1 END), \
     count(CASE WHEN j.state = 'running' THEN 1 END), \
     count(CASE WHEN j.state = 'succeeded' THEN 1 END), \
     count(CASE WHEN j.state = 'failed' THEN 1 END), \
     count(CASE WHEN j.state = 'cancelled' THEN 1 END), \
     count(j.id) = count(CASE WHEN j.state IN ('succeeded', 'failed', 'cancelled') THEN 1 END), \
     b.queue, b.finished_at, min(j.started_at), max(j.finished_at), b.webhook, b.webhook_status";

/// A page of batches (or one, by id), newest first: the batches are chosen first,
/// then only their jobs are counted, through the (batch_id, state) index.
pub(crate) fn batch_page_sql(
    d: &Dialect,
    query: &BatchQuery,
    one: Option<BatchId>,
) -> (String, Vec<Param>) {
    let mut b = Binds {
        dialect: d,
        params: Vec::new(),
    };
    let mut conditions = Vec::new();
    if let Some(id) = one {
        conditions.push(format!("id = {}", b.add(Param::Id(id.0))));
    }
    if let Some(before) = query.before {
        conditions.push(format!("id < {}", b.add(Param::Id(before.0))));
    }
    if let Some(name) = &query.name {
        let p = b.add(Param::Text(name.to_lowercase()));
        conditions.push(format!("{}(lower(name), {p}) > 0", d.position));
    }
    match query.done {
        Some(true) => conditions.push("finished_at IS NOT NULL".into()),
        Some(false) => conditions.push("finished_at IS NULL".into()),
        None => {}
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let limit = b.add(Param::Int(query.limit.max(1)));
    let s = d.schema;
    let sql = format!(
        "SELECT {BATCH_INFO} FROM
           (SELECT id, name, created_at, queue, finished_at, webhook, webhook_status
            FROM {s}batches {filter} ORDER BY id DESC LIMIT {limit}) b
         LEFT JOIN {s}jobs j ON j.batch_id = b.id
         GROUP BY b.id, b.name, b.created_at, b.queue, b.finished_at, b.webhook, b.webhook_status
         ORDER BY b.id DESC"
    );
    (sql, b.params)
}

pub(crate) fn batch_info(r: &impl Columns) -> Result<BatchInfo, DbError> {
    Ok(BatchInfo {
        progress: progress(r)?,
        queue: r.text(10)?,
        finished_at: r.opt_time(11)?,
        first_started_at: r.opt_time(12)?,
        last_finished_at: r.opt_time(13)?,
        webhook: match r.opt_text(14)? {
            Some(url) => Some(Webhook {
                url,
                status: r.opt_text(15)?,
            }),
            None => None,
        },
    })
}

/// A page of a batch's jobs by id; `columns` is the backend's [`JOB_ROW`].
pub(crate) fn job_page_sql(
    d: &Dialect,
    columns: &str,
    batch: BatchId,
    query: &JobQuery,
) -> (String, Vec<Param>) {
    let mut b = Binds {
        dialect: d,
        params: Vec::new(),
    };
    let mut conditions = vec![format!("batch_id = {}", b.add(Param::Id(batch.0)))];
    if let Some(state) = query.state {
        conditions.push(format!(
            "state = {}",
            b.add(Param::Text(state.as_str().into()))
        ));
    }
    if let Some(text) = &query.search {
        let p = b.add(Param::Text(text.to_lowercase()));
        conditions.push(format!(
            "{}(lower(coalesce({}, '')), {p}) > 0",
            d.position, d.prompt
        ));
    }
    if let Some(after) = query.after {
        conditions.push(format!("id > {}", b.add(Param::Id(after.0))));
    }
    let limit = b.add(Param::Int(query.limit.max(1)));
    let sql = format!(
        "SELECT {columns} FROM {}jobs WHERE {} ORDER BY id LIMIT {limit}",
        d.schema,
        conditions.join(" AND ")
    );
    (sql, b.params)
}

/// `impl Browse for $record`: the same on both backends once `DIALECT` spells the
/// SQL, `job_columns()` the job columns and `bound` binds the parameters.
macro_rules! browse_impl {
    ($record:ty) => {
        #[async_trait]
        impl Browse for $record {
            async fn batch_page(&self, query: &BatchQuery) -> Result<Vec<BatchInfo>, DbError> {
                let (sql, params) = batch_page_sql(&DIALECT, query, None);
                let rows = bound(&sql, params).fetch_all(&self.pool).await?;
                rows.iter().map(batch_info).collect()
            }

            async fn batch_info(&self, batch: BatchId) -> Result<Option<BatchInfo>, DbError> {
                let query = BatchQuery {
                    limit: 1,
                    ..BatchQuery::default()
                };
                let (sql, params) = batch_page_sql(&DIALECT, &query, Some(batch));
                let row = bound(&sql, params).fetch_optional(&self.pool).await?;
                row.as_ref().map(batch_info).transpose()
            }

            async fn job_page(
                &self,
                batch: BatchId,
                query: &JobQuery,
            ) -> Result<Vec<JobRow>, DbError> {
                let (sql, params) = job_page_sql(&DIALECT, &job_columns(), batch, query);
                let rows = bound(&sql, params).fetch_all(&self.pool).await?;
                rows.iter().map(job_row).collect()
            }

            async fn job_detail(&self, job: JobId) -> Result<Option<JobDetail>, DbError> {
                let sql = format!(
                    "SELECT {}, {JOB_DETAIL} FROM {}jobs WHERE id = {}",
                    job_columns(),
                    DIALECT.schema,
                    (DIALECT.param)(1)
                );
                let row = bound(&sql, vec![Param::Id(job.0)])
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(mut detail) = row.as_ref().map(job_detail).transpose()? else {
                    return Ok(None);
                };
                if !may_have_ended_attempts(&detail.row) {
                    detail.attempts = attempt_history(&detail, Vec::new());
                    return Ok(Some(detail));
                }
                let sql = format!(
                    "SELECT attempt, worker, started_at, ended_at, outcome, error
                     FROM {}job_attempts WHERE job_id = {} ORDER BY attempt, ended_at",
                    DIALECT.schema,
                    (DIALECT.param)(1)
                );
                let ended = bound(&sql, vec![Param::Id(job.0)])
                    .fetch_all(&self.pool)
                    .await?;
                let ended = ended.iter().map(attempt_row).collect::<Result<Vec<_>, _>>()?;
                detail.attempts = attempt_history(&detail, ended);
                Ok(Some(detail))
            }

            async fn job_changes(
                &self,
                batch: BatchId,
                since: DateTime<Utc>,
            ) -> Result<Vec<(JobId, JobState)>, DbError> {
                let p = DIALECT.param;
                let sql = format!(
                    "SELECT id, state FROM {}jobs WHERE batch_id = {}
                       AND (started_at >= {} OR finished_at >= {} OR run_at >= {}) ORDER BY id",
                    DIALECT.schema, p(1), p(2), p(3), p(4)
                );
                let rows = bound(&sql, vec![
                    Param::Id(batch.0),
                    Param::Time(since),
                    Param::Time(since),
                    Param::Time(since),
                ])
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        let state: String = r.try_get(1)?;
                        Ok((JobId(r.uuid(0)?), state.parse().map_err(DbError::Invalid)?))
                    })
                    .collect()
            }

            async fn workers(&self) -> Result<Vec<WorkerRow>, DbError> {
                let sql = format!(
                    "SELECT id, host, device, {}, queue, started_at, last_heartbeat, jobs_done, stopped_at
                     FROM {}workers ORDER BY (stopped_at IS NULL) DESC, last_heartbeat DESC LIMIT 500",
                    DIALECT.models, DIALECT.schema
                );
                let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
                rows.iter().map(worker_row).collect()
            }

            async fn queues(&self) -> Result<Vec<String>, DbError> {
                let s = DIALECT.schema;
                let sql = format!(
                    "SELECT queue FROM (SELECT queue FROM {s}batches ORDER BY id DESC LIMIT 1000) b
                     UNION SELECT queue FROM {s}workers ORDER BY 1"
                );
                let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
                rows.iter().map(|r| Ok(r.try_get::<String, _>(0)?)).collect()
            }
        }
    };
}

/// A row of `workers`, from the columns `browse_impl`'s `workers` reads.
pub(crate) fn worker_row(r: &impl Columns) -> Result<WorkerRow, DbError> {
    Ok(WorkerRow {
        info: WorkerInfo {
            id: r.text(0)?,
            host: r.text(1)?,
            device: r.text(2)?,
            models: r
                .text(3)?
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect(),
            queue: r.text(4)?,
        },
        started_at: r.time(5)?,
        last_heartbeat: r.time(6)?,
        jobs_done: r.int(7)?,
        stopped_at: r.opt_time(8)?,
    })
}
pub(crate) use browse_impl;

/// The columns [`job_detail`] reads after the backend's [`JOB_ROW`].
pub(crate) const JOB_DETAIL: &str =
    "queue, spec, max_attempts, created_at, started_at, finished_at, run_at";

pub(crate) fn job_detail(r: &impl Columns) -> Result<JobDetail, DbError> {
    Ok(JobDetail {
        row: job_row(r)?,
        queue: r.text(10)?,
        spec: r.opt_json(11)?.unwrap_or_default(),
        max_attempts: r.int32(12)?,
        created_at: r.time(13)?,
        started_at: r.opt_time(14)?,
        finished_at: r.opt_time(15)?,
        run_at: r.opt_time(16)?,
        attempts: Vec::new(),
    })
}

/// An ended attempt, from the columns `job_detail` reads of `job_attempts`.
pub(crate) fn attempt_row(r: &impl Columns) -> Result<AttemptRow, DbError> {
    Ok(AttemptRow {
        attempt: r.int32(0)?,
        worker: r.opt_text(1)?,
        started_at: r.opt_time(2)?,
        ended_at: r.opt_time(3)?,
        outcome: r.text(4)?,
        error: r.opt_text(5)?,
    })
}

/// Whether `job_attempts` can hold a row of this job: not for the common status
/// read of a job on its first attempt, running or succeeded (an attempt that ended
/// otherwise would have moved it), which so costs one query, not two.
pub(crate) fn may_have_ended_attempts(job: &JobRow) -> bool {
    !(job.attempt == 0
        || (job.attempt == 1 && matches!(job.state, JobState::Running | JobState::Succeeded)))
}

/// A job's attempts: those `job_attempts` kept (they ended without success), then
/// the latest one from the job's row unless it is among them: running, succeeded, or
/// ended in a way the row shows alone (cancelled before it ran, say).
pub(crate) fn attempt_history(job: &JobDetail, mut ended: Vec<AttemptRow>) -> Vec<AttemptRow> {
    let latest = job.row.attempt;
    if latest > 0 && !ended.iter().any(|a| a.attempt == latest) {
        let state = job.row.state;
        let running = state == JobState::Running;
        ended.push(AttemptRow {
            attempt: latest,
            worker: job.row.worker.clone(),
            started_at: job.started_at,
            ended_at: if running { None } else { job.finished_at },
            outcome: state.as_str().to_string(),
            error: if state == JobState::Succeeded {
                None
            } else {
                job.row.error.clone()
            },
        });
    }
    ended
}

/// The columns [`token_info`] reads.
pub(crate) const TOKEN_INFO: &str = "id, name, scope, created_at, last_used_at, revoked_at";

pub(crate) fn token_info(r: &impl Columns) -> Result<TokenInfo, DbError> {
    Ok(TokenInfo {
        id: r.text(0)?,
        name: r.text(1)?,
        scope: r.text(2)?.parse().map_err(DbError::Invalid)?,
        created_at: r.time(3)?,
        last_used_at: r.opt_time(4)?,
        revoked_at: r.opt_time(5)?,
    })
}
