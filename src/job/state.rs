//! The lifecycle of a job.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Where a job is in its life. Mirrored by the `state` column of `renderq.jobs`
/// (a CHECK constraint lists the same names).
///
/// ```text
/// queued ──claim──▶ running ──stored──▶ succeeded
///    ▲                 │ ├──error, attempts left──▶ retrying ──due──▶ queued
///    │                 │ └──error, none left / not retryable──▶ failed
///    └──lease expired or worker dead (takeover)
/// queued | retrying | running ──cancel──▶ cancelled
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting in the stream. Entered at submit (the producer), when a retry is due
    /// (the delayed-set mover) or when a draining worker releases it.
    Queued,
    /// A worker holds it (claim, fenced by `attempt`). Left by that worker's
    /// completion, or by a takeover after the lease, which bumps `attempt`.
    Running,
    /// Failed with a retryable error and waiting out its backoff in the delayed set.
    Retrying,
    /// Terminal: the object store acknowledged the image before this was written.
    Succeeded,
    /// Terminal: a non-retryable error, or the last attempt failed; `error` says why.
    Failed,
    /// Terminal: `renderq cancel`; a running attempt's result is discarded.
    Cancelled,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Retrying,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The name stored in the `state` column.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether no transition leaves this state (succeeded, failed, cancelled).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown job state `{s}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
        }
        assert!(JobState::Cancelled.is_terminal() && !JobState::Retrying.is_terminal());
    }
}
