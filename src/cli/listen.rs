//! `--listen` and `--stall-secs`: the health and metrics endpoints of the
//! long-running commands (`worker`, `scheduler`).

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use clap::Args;

use crate::{
    telemetry::{self, Health},
    worker::DEFAULT_STALL,
};

/// Where to serve `/livez`, `/readyz` and `/metrics`, and when a loop counts as stuck.
#[derive(Args, Debug, Clone)]
pub struct ListenArgs {
    /// Serve /livez, /readyz and /metrics on this address (host:port; off by default)
    #[arg(long, env = "RENDERQ_LISTEN")]
    pub listen: Option<String>,
    /// Seconds a loop may be busy without progress before /livez answers 503 (longer
    /// than a model's load and the slowest device call)
    #[arg(long, env = "RENDERQ_STALL_SECS", default_value_t = DEFAULT_STALL.as_secs_f64())]
    pub stall_secs: f64,
}

impl ListenArgs {
    /// The process's health, served on `--listen` when one is given.
    pub async fn start(&self) -> Result<Arc<Health>> {
        let stall = Duration::try_from_secs_f64(self.stall_secs)
            .ok()
            .filter(|d| !d.is_zero())
            .context("--stall-secs must be a positive number of seconds")?;
        let health = Health::new(stall);
        if let Some(addr) = &self.listen {
            let bound = telemetry::listen(addr, health.clone())
                .await
                .with_context(|| format!("--listen {addr}: cannot listen there"))?;
            eprintln!("health and metrics on http://{bound}");
        }
        Ok(health)
    }
}
