//! `renderq manifest BATCH`: the results of a batch as CSV or JSON Lines (see
//! [`crate::manifest`]).

use std::{io::Write, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Result, anyhow};
use clap::Args;

use super::{Global, connect_record, parse_batch};
use crate::{
    manifest::{self, Format},
    store,
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
    let format: Format = args.format.parse().map_err(|e| anyhow!("--format {e}"))?;
    let record = connect_record(g, !g.no_migrate).await?;
    if record.progress(batch).await?.is_none() {
        eprintln!("error: no batch {batch}");
        return Ok(ExitCode::from(2));
    }
    let store = store::open(&g.store).await?;
    let expires = Duration::from_secs(args.expires_secs);
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => Box::new(std::io::stdout().lock()),
    };
    manifest::write(
        record.as_ref(),
        store.as_ref(),
        batch,
        format,
        expires,
        &mut out,
    )
    .await?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
