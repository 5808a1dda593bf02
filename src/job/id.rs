//! Job and batch ids.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Identifies one job. Producers may choose it (any UUID); renderq makes v7 UUIDs,
/// which sort by creation time.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

/// Identifies one submitted batch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
pub struct BatchId(pub Uuid);

impl JobId {
    /// A new id, a v7 UUID: ids sort by creation time.
    pub fn generate() -> Self {
        JobId(Uuid::now_v7())
    }

    /// The id of a raw Redis message that carried no `id`: derived from the queue and
    /// the stream entry id, so a redelivery of the same message maps to the same job.
    pub fn for_raw_message(queue: &str, entry_id: &str) -> Self {
        JobId(Uuid::new_v5(
            &Uuid::NAMESPACE_URL,
            format!("renderq:{queue}:{entry_id}").as_bytes(),
        ))
    }

    /// The seed used when the job names none: stable for the job, recorded on it.
    pub fn default_seed(&self) -> u64 {
        let (hi, lo) = self.0.as_u64_pair();
        // Keep it within i64 so it round-trips through Postgres `bigint` and JSON readers.
        (hi ^ lo.rotate_left(17)) & (i64::MAX as u64)
    }
}

impl BatchId {
    /// A new id, a v7 UUID: ids sort by creation time.
    pub fn generate() -> Self {
        BatchId(Uuid::now_v7())
    }
}

macro_rules! uuid_newtype_text {
    ($t:ident) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
        impl FromStr for $t {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map($t)
            }
        }
    };
}
uuid_newtype_text!(JobId);
uuid_newtype_text!(BatchId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_message_ids_are_stable() {
        let a = JobId::for_raw_message("q", "1-0");
        assert_eq!(a, JobId::for_raw_message("q", "1-0"));
        assert_ne!(a, JobId::for_raw_message("q", "1-1"));
        assert!(a.default_seed() <= i64::MAX as u64);
    }
}
