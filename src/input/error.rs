//! What a refused submit file reports: every bad line with its field, or why the file
//! as a whole cannot be read.

use crate::job::FieldError;

/// One refused line (of a JSON Lines or CSV file).
#[derive(Debug, Clone, PartialEq)]
pub struct LineError {
    /// The line's number, from 1.
    pub line: usize,
    /// The CSV column at fault, when it is a column rather than a job field.
    pub column: Option<String>,
    /// The field at fault, and why.
    pub error: FieldError,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.column {
            Some(c) => write!(f, "line {}: column `{c}`: {}", self.line, self.error.reason),
            None => write!(f, "line {}: {}", self.line, self.error),
        }
    }
}

impl std::error::Error for LineError {}

/// Errors reported when at most this many lines are refused; the rest are counted.
pub(crate) const MAX_REPORTED: usize = 20;

/// Why a submit file gave no jobs. Nothing is queued when any of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Lines that are not valid jobs: the first 20, and how many in all.
    #[error("{}", invalid_summary(.errors, *.total))]
    Invalid {
        /// The refused lines reported.
        errors: Vec<LineError>,
        /// How many lines were refused in all.
        total: usize,
    },
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file or the batch is over a limit (bytes per submit, jobs per batch).
    #[error("{0}")]
    TooLarge(String),
    /// An option cannot be used as given (a template that does not parse, variants
    /// out of range, a CSV file without a template); the message names the flag.
    #[error("{0}")]
    Options(String),
    /// The file holds no job.
    #[error("the file has no jobs")]
    Empty,
}

fn invalid_summary(errors: &[LineError], total: usize) -> String {
    let mut s = format!("{total} invalid line(s); nothing was queued");
    for e in errors {
        s.push_str(&format!("\n  {e}"));
    }
    if total > errors.len() {
        s.push_str(&format!("\n  … and {} more", total - errors.len()));
    }
    s
}

/// Keeps a refusal if fewer than [`MAX_REPORTED`] are kept already.
pub(crate) fn push(errors: &mut Vec<LineError>, e: LineError) {
    if errors.len() < MAX_REPORTED {
        errors.push(e);
    }
}
