//! A batch's manifest: its results as CSV or JSON Lines, to go back into the shop's
//! product table: job id, the source row's columns, state, object key and URL
//! (presigned on S3), seed, error. `renderq manifest` and the HTTP API write it.

use std::{collections::BTreeSet, io::Write, time::Duration};

use anyhow::Result;
use serde_json::{Map, Value};

use crate::{db::Record, job::BatchId, store::Store};

/// How a manifest is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A header of the source columns, then the fixed ones.
    Csv,
    /// One JSON object per job, the source columns under `metadata`.
    Jsonl,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "csv" => Ok(Format::Csv),
            "jsonl" => Ok(Format::Jsonl),
            other => Err(format!("`{other}` is not csv or jsonl")),
        }
    }
}

/// Writes the manifest of an existing batch to `out`.
pub async fn write<W: Write + ?Sized>(
    record: &dyn Record,
    store: &dyn Store,
    batch: BatchId,
    format: Format,
    expires: Duration,
    out: &mut W,
) -> Result<()> {
    let jobs = record.jobs_of_batch(batch).await?;
    let mut rows = Vec::with_capacity(jobs.len());
    for job in &jobs {
        let url = match &job.output_key {
            Some(key) => Some(store.share_url(key, expires).await?),
            None => None,
        };
        let mut row = Map::new();
        row.insert("job_id".into(), Value::from(job.id.to_string()));
        row.insert("state".into(), Value::from(job.state.as_str()));
        row.insert(
            "object_key".into(),
            job.output_key.clone().map_or(Value::Null, Value::from),
        );
        row.insert("url".into(), url.map_or(Value::Null, Value::from));
        row.insert("seed".into(), Value::from(job.seed));
        row.insert(
            "error".into(),
            job.error.clone().map_or(Value::Null, Value::from),
        );
        let metadata = match &job.metadata {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        rows.push((row, metadata));
    }
    match format {
        Format::Jsonl => {
            for (mut row, metadata) in rows {
                row.insert("metadata".into(), Value::Object(metadata));
                writeln!(out, "{}", Value::Object(row))?;
            }
        }
        Format::Csv => {
            // The source row's columns first, as the shop's table had them.
            let columns: BTreeSet<String> =
                rows.iter().flat_map(|(_, m)| m.keys().cloned()).collect();
            let fixed = ["job_id", "state", "object_key", "url", "seed", "error"];
            let mut w = csv::Writer::from_writer(out);
            w.write_record(columns.iter().map(String::as_str).chain(fixed))?;
            for (row, metadata) in &rows {
                let text = |v: Option<&Value>| match v {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                let record: Vec<String> = columns
                    .iter()
                    .map(|c| text(metadata.get(c)))
                    .chain(fixed.iter().map(|f| text(row.get(*f))))
                    .collect();
                w.write_record(&record)?;
            }
            w.flush()?;
        }
    }
    Ok(())
}
