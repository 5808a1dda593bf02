//! Input: a submit file (JSON Lines, or CSV through prompt and key templates) read
//! into validated jobs, before anything touches a server. Every refused line is
//! reported with its number and field; nothing is queued unless every line is valid.

mod catalogue;
mod error;
mod jsonl;
mod options;

use std::path::Path;

pub use catalogue::{Catalogue, MAX_VARIANTS, Template};
pub use error::{InputError, LineError};
pub use jsonl::{parse_jsonl, parse_jsonl_with, read_jsonl, read_jsonl_with};
pub use options::SubmitOptions;

use crate::job::{Limits, NewJob};

/// Reads a local file into jobs: CSV through the catalogue when a template is given,
/// else JSON Lines. A `.csv` file without a template is refused, naming the flag.
pub fn read(
    path: &Path,
    options: &SubmitOptions,
    limits: &Limits,
) -> Result<Vec<NewJob>, InputError> {
    match options.catalogue()? {
        Some(c) => c.read(path, limits),
        None if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv")) =>
        {
            Err(InputError::Options(format!(
                "{} is a CSV file: say how a row becomes a prompt with --template 'photo of {{name}}'",
                path.display()
            )))
        }
        None => read_jsonl_with(path, limits, options),
    }
}
