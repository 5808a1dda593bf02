//! `renderq manifest BATCH`: the results of a batch as CSV or JSON Lines, to go back
//! into the shop's product table: job id, the source row's columns, state, object key
//! and URL (presigned on S3), seed, error.

use std::{collections::BTreeSet, io::Write, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::Args;
use serde_json::{Map, Value};

use super::{Global, connect_record, parse_batch};
use crate::{
    db::Record,
    job::BatchId,
    store::{self, Store},
};

/// `renderq manifest BATCH`: which batch, in which format, written where.
#[derive(Args, Debug)]
pub struct ManifestArgs {
    /// The batch id, as submit printed it.
    pub batch: String,
    /// csv or jsonl
    #[arg(long, default_value = "csv")]
    pub format: String,
    /// Write here instead of stdout
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// How long presigned S3 URLs stay valid, in seconds
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub expires_secs: u64,
}

pub async fn command(g: &Global, args: ManifestArgs) -> Result<ExitCode> {
    let batch = parse_batch(&args.batch)?;
    let record = connect_record(g, !g.no_migrate).await?;
    let store = store::open(&g.store).await?;
    let expires = Duration::from_secs(args.expires_secs);
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => Box::new(std::io::stdout().lock()),
    };
    let code = write(
        record.as_ref(),
        store.as_ref(),
        batch,
        &args.format,
        expires,
        &mut out,
    )
    .await?;
    out.flush()?;
    Ok(code)
}

/// Writes the manifest to `out`. `format` is `csv` or `jsonl`.
pub async fn write(
    record: &dyn Record,
    store: &dyn Store,
    batch: BatchId,
    format: &str,
    expires: Duration,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    if record.progress(batch).await?.is_none() {
        eprintln!("error: no batch {batch}");
        return Ok(ExitCode::from(2));
    }
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
        "jsonl" => {
            for (mut row, metadata) in rows {
                row.insert("metadata".into(), Value::Object(metadata));
                writeln!(out, "{}", Value::Object(row))?;
            }
        }
        "csv" => {
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
        other => anyhow::bail!("--format `{other}` is not csv or jsonl"),
    }
    Ok(ExitCode::SUCCESS)
}
