//! Choosing backends by URL: `DATABASE_URL` picks the record (Postgres or SQLite);
//! `REDIS_URL` picks Redis dispatch, and without it dispatch goes through the record's
//! own database. With nothing set: SQLite in `./renderq.db`, database dispatch.

use std::{sync::Arc, time::Duration};

use crate::{
    db::{DbError, PgRecord, Record, SqliteRecord},
    dispatch::{Dispatch, DispatchError, PgDispatch, RedisDispatch, SqliteDispatch},
    redact::redact_url,
};

/// The record when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://renderq.db";

/// Why the record or dispatch named by a URL could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    // The cause is part of the message (not a `source`), so it is printed once.
    /// The record's database could not be opened.
    #[error("opening the database at {url}: {error}")]
    Db {
        /// The URL, its password hidden.
        url: String,
        /// Why.
        error: DbError,
    },
    /// Redis could not be reached.
    #[error("connecting to Redis at {url}: {error}")]
    Redis {
        /// The URL, its password hidden.
        url: String,
        /// Why.
        error: DispatchError,
    },
    /// A URL whose scheme names no backend renderq has.
    #[error(
        "DATABASE_URL `{0}` is neither postgres://… nor sqlite://… (a path to a file, created when missing)"
    )]
    Scheme(String),
}

/// A record, and the database handle database dispatch needs.
pub enum Database {
    /// The record on Postgres.
    Postgres(PgRecord),
    /// The record in a SQLite file.
    Sqlite(SqliteRecord),
}

impl Database {
    /// Opens the record `DATABASE_URL` names (SQLite in `./renderq.db` without one), applying migrations when asked.
    pub async fn open(url: Option<&str>, migrate: bool) -> Result<Database, BackendError> {
        let url = url.unwrap_or(DEFAULT_DATABASE_URL);
        let err = |error| BackendError::Db {
            url: redact_url(url),
            error,
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Database::Postgres(
                PgRecord::connect(url, migrate).await.map_err(err)?,
            ))
        } else if url.starts_with("sqlite:") {
            Ok(Database::Sqlite(
                SqliteRecord::connect(url, migrate).await.map_err(err)?,
            ))
        } else {
            Err(BackendError::Scheme(redact_url(url)))
        }
    }

    /// The record of this database, shared by every part of the process.
    pub fn record(&self) -> Arc<dyn Record> {
        match self {
            Database::Postgres(r) => Arc::new(r.clone()),
            Database::Sqlite(r) => Arc::new(r.clone()),
        }
    }

    /// Dispatch through this database (no Redis).
    pub fn dispatch(&self, queue: &str, lease: Duration) -> Arc<dyn Dispatch> {
        match self {
            Database::Postgres(r) => Arc::new(PgDispatch::new(r.pool().clone(), queue, lease)),
            Database::Sqlite(r) => Arc::new(SqliteDispatch::new(r.pool().clone(), queue, lease)),
        }
    }
}

/// Opens the record and the dispatch a command needs.
pub async fn open(
    database_url: Option<&str>,
    redis_url: Option<&str>,
    queue: &str,
    lease: Duration,
    migrate: bool,
) -> Result<(Arc<dyn Record>, Arc<dyn Dispatch>), BackendError> {
    let db = Database::open(database_url, migrate).await?;
    let dispatch: Arc<dyn Dispatch> = match redis_url {
        Some(url) => Arc::new(RedisDispatch::connect(url, queue).await.map_err(|error| {
            BackendError::Redis {
                url: redact_url(url),
                error,
            }
        })?),
        None => db.dispatch(queue, lease),
    };
    Ok((db.record(), dispatch))
}
