//! renderq: bulk text-to-image rendering.
//!
//! Producers submit prompt jobs; workers claim them from a queue, render them, store
//! the images and record every state change. One module per concept, from the bottom
//! up: each module uses only modules listed before it (`tests/layers.rs` checks this).
//!
//! - [`job`]: ids, the lifecycle ([`job::JobState`]), the job JSON and its limits, and
//!   the shapes a job takes on its way (new, placed in a lane, claimed).
//! - [`redact`]: keeping secrets out of what is printed.
//! - [`token`]: the HTTP API's bearer tokens and their scopes.
//! - [`telemetry`]: Prometheus metrics, liveness and readiness, served on `--listen`.
//! - [`input`]: a submit file (JSON Lines, or CSV through templates) read into
//!   validated jobs, with the one [`input::SubmitOptions`].
//! - [`schedule`]: cron schedules as stored, and when each is due.
//! - [`db`]: the record (Postgres `renderq.*`, or SQLite), by role, fenced by attempt.
//! - [`dispatch`]: handing jobs to workers with leases (Redis Streams, or the database).
//! - [`store`]: where images go (S3-compatible servers, a local directory).
//! - [`render`]: the renderer trait, the built-in models, diffusion and remote.
//! - [`submit`]: writing a batch to the record, then dispatching it.
//! - [`webhook`]: the signed summary POSTed when a batch finishes.
//! - [`sheet`]: the contact sheet `renderq run` writes.
//! - [`manifest`]: a batch's results as CSV or JSON Lines.
//! - [`worker`]: the claim → render → encode → upload → record pipeline.
//! - [`scheduler`]: firing due schedules, one batch per firing.
//! - [`serve`]: the HTTP API (`renderq serve`) on the record, dispatch and store.
//! - [`backend`]: choosing the record and dispatch backends from the URLs.
//! - [`cli`]: the `renderq` command line, one file per command; the binary only calls
//!   [`cli::main`].
//!
//! `docs/design.md` in the repository describes the parts, the lifecycle, the Redis
//! keys, the tables and the promises, with the test that proves each.

// Every public item says what it is and why: a build fails on one that does not.
#![deny(missing_docs)]

pub mod backend;
pub mod cli;
pub mod db;
pub mod dispatch;
pub mod input;
pub mod job;
pub mod manifest;
pub mod redact;
pub mod render;
pub mod schedule;
pub mod scheduler;
pub mod serve;
pub mod sheet;
pub mod store;
pub mod submit;
pub mod telemetry;
pub mod token;
pub mod webhook;
pub mod worker;

/// rustls finds two crypto providers in this dependency set and refuses to pick one:
/// every HTTPS client (S3, webhooks, remote renderers) needs this first. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
