//! renderq: bulk text-to-image rendering.
//!
//! Producers submit prompt jobs; workers claim them from a queue, render them, store
//! the images and record every state change. The modules, one concept each:
//!
//! - [`job`]: ids, the lifecycle ([`job::JobState`]), the job JSON and its limits.
//! - [`backend`]: choosing the record and dispatch backends from the URLs.
//! - [`db`]: the record (Postgres `renderq.*`, or SQLite), fenced by attempt.
//! - [`dispatch`]: handing jobs to workers with leases (Redis Streams, or the database).
//! - [`store`]: where images go (S3-compatible servers, a local directory).
//! - [`render`]: the renderer trait and the built-in models (`placeholder`, `noop`).
//! - [`worker`]: the claim → render → encode → upload → record pipeline.
//! - [`submit`]: validating a file and writing it as one batch.
//! - [`catalogue`]: CSV rows to jobs through prompt and key templates.
//! - [`sheet`]: the contact sheet `renderq run` writes.
//! - [`schedule`]: cron schedules that turn a file into a batch at each firing.
//! - [`cli`]: the `renderq` command line; the binary only calls [`cli::main`].
//! - [`webhook`]: the signed summary POSTed when a batch finishes.
//! - [`redact`]: keeping secrets out of what is printed.
//!
//! The promises these keep are listed in the README (How it keeps its promises, Failure
//! drills); each has a test.

pub mod backend;
pub mod cli;
pub mod db;
pub mod dispatch;
pub mod input;
pub mod job;
pub mod redact;
pub mod render;
pub mod schedule;
pub mod scheduler;
pub mod sheet;
pub mod store;
pub mod submit;
pub mod webhook;
pub mod worker;

/// rustls finds two crypto providers in this dependency set and refuses to pick one:
/// every HTTPS client (S3, webhooks, remote renderers) needs this first. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
