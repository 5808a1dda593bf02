//! What a long-running process tells the outside: Prometheus metrics, liveness (its
//! loops make progress) and readiness (what it needs answers), served over HTTP on
//! `--listen`. Nothing here knows the record, dispatch or store: the worker and the
//! scheduler hand in their loops and their readiness probes.

mod health;
mod metrics;
mod server;

pub use health::{Beat, Health, Probe, ProbeResult, idle_current, tick_current, watched};
pub use metrics::{Metrics, metrics};
pub use server::{listen, router};
