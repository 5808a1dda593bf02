//! Jobs: ids, the lifecycle, the job JSON (`JobSpec`) and its validation, and the
//! shapes a job takes on its way (written by a producer, waiting in a lane, held by a
//! worker). Every other module builds on these; this one imports none of them.
//!
//! Validation happens once, at the edge (submit, or a raw Redis message), so the
//! worker only ever sees specs that are within the limits.

mod id;
mod spec;
mod state;

pub use id::{BatchId, JobId};
pub use spec::{
    DEFAULT_MODEL, FieldError, ImageFormat, JobSpec, KNOWN_MODELS, LCM_MAX_STEPS, Limits,
    MAX_PRIORITY, Sampler, validate_model_name, validate_output_key,
};
pub use state::JobState;

/// A job about to be written by a producer.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Its id: the producer's, or a new v7 UUID.
    pub id: JobId,
    /// What to render.
    pub spec: JobSpec,
}

/// A job a worker now holds: `attempt` fences everything it writes afterwards.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// The job.
    pub id: JobId,
    /// Its batch, if it came in one.
    pub batch_id: Option<BatchId>,
    /// This attempt's number; every write of the worker names it.
    pub attempt: i32,
    /// The seed it renders with (its own, or one derived from its id).
    pub seed: u64,
    /// What to render.
    pub spec: JobSpec,
    /// When it was submitted (for the time from submit to claim).
    pub submitted_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A job and where it waits: its batch (if any) and its priority.
pub type Placed = (JobId, Option<BatchId>, i32);
