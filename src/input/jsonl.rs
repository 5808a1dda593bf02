//! JSON Lines: one job per line. Every line is read with a cap on its length and
//! validated; a bad line is reported with its number and field and never stops the
//! others from being checked.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read},
    path::Path,
};

use super::{InputError, LineError, SubmitOptions, error::MAX_REPORTED};
use crate::job::{FieldError, JobId, JobSpec, Limits, NewJob};

/// Reads and validates a JSON Lines file.
pub fn read_jsonl(path: &Path, limits: &Limits) -> Result<Vec<NewJob>, InputError> {
    read_jsonl_with(path, limits, &SubmitOptions::default())
}

/// As `read_jsonl`, with defaults for the fields a line does not set.
pub fn read_jsonl_with(
    path: &Path,
    limits: &Limits,
    defaults: &SubmitOptions,
) -> Result<Vec<NewJob>, InputError> {
    let io = |source| InputError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > limits.max_file_bytes {
        return Err(InputError::TooLarge(format!(
            "{} is {size} bytes, over the limit of {} bytes per submit; split it",
            path.display(),
            limits.max_file_bytes
        )));
    }
    parse_jsonl_with(BufReader::with_capacity(1 << 20, file), limits, defaults).map_err(|e| match e
    {
        InputError::Io { source, .. } => io(source),
        other => other,
    })
}

/// How long a line read by [`read_line_capped`] was.
enum LineLength {
    /// Within the cap: the line is in the buffer.
    Within,
    /// Over the cap: only its first bytes were kept; this many were read in all.
    Over(u64),
}

/// Reads one line into `buf`, keeping at most `cap` bytes of it: a line of a
/// gigabyte costs a buffer of `cap`, not a gigabyte. `None` at the end of input.
fn read_line_capped(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<Option<LineLength>> {
    // One byte over the cap tells an over-long line from one exactly at it.
    let n = reader
        .by_ref()
        .take(cap as u64 + 1)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    let content = buf.strip_suffix(b"\n").unwrap_or(buf);
    let content = content.strip_suffix(b"\r").unwrap_or(content);
    if content.len() <= cap {
        return Ok(Some(LineLength::Within));
    }
    // Skip the rest of the line without keeping it.
    let mut total = n as u64;
    if buf.last() != Some(&b'\n') {
        loop {
            let chunk = reader.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    reader.consume(i + 1);
                    total += i as u64;
                    break;
                }
                None => {
                    let len = chunk.len();
                    reader.consume(len);
                    total += len as u64;
                }
            }
        }
    }
    buf.truncate(cap);
    Ok(Some(LineLength::Over(total)))
}

/// Parses and validates every line; blank lines are skipped. Reports up to 20
/// errors, each with its line number and field, and counts the rest.
pub fn parse_jsonl(reader: impl Read, limits: &Limits) -> Result<Vec<NewJob>, InputError> {
    parse_jsonl_with(reader, limits, &SubmitOptions::default())
}

/// As `parse_jsonl`, with defaults for the fields a line does not set.
pub fn parse_jsonl_with(
    reader: impl Read,
    limits: &Limits,
    defaults: &SubmitOptions,
) -> Result<Vec<NewJob>, InputError> {
    let mut reader = BufReader::new(reader);
    let mut jobs = Vec::new();
    let mut errors = Vec::new();
    let mut total_errors = 0;
    let mut seen: HashMap<JobId, usize> = HashMap::new();
    let mut buf = Vec::new();
    let mut line = 0;
    loop {
        buf.clear();
        let read =
            read_line_capped(&mut reader, &mut buf, limits.max_line_bytes).map_err(|source| {
                InputError::Io {
                    path: String::new(),
                    source,
                }
            })?;
        let Some(length) = read else {
            break;
        };
        line += 1;
        let mut refuse = |error: FieldError| {
            total_errors += 1;
            if errors.len() < MAX_REPORTED {
                errors.push(LineError {
                    line,
                    column: None,
                    error,
                });
            }
        };
        if let LineLength::Over(bytes) = length {
            refuse(FieldError {
                field: "line",
                reason: format!(
                    "{bytes} bytes is over the limit of {} bytes per job",
                    limits.max_line_bytes
                ),
            });
            continue;
        }
        let text = match std::str::from_utf8(&buf) {
            Ok(t) => t.trim(),
            Err(e) => {
                refuse(FieldError {
                    field: "line",
                    reason: format!("not valid UTF-8 (byte {})", e.valid_up_to()),
                });
                continue;
            }
        };
        if text.is_empty() {
            continue;
        }
        let with_defaults;
        let text = if !defaults.has_job_defaults() {
            text
        } else {
            match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(mut job)) => {
                    defaults.apply_job_defaults(&mut job);
                    with_defaults = serde_json::Value::Object(job).to_string();
                    with_defaults.as_str()
                }
                _ => text, // JobSpec::parse reports what is wrong with it
            }
        };
        match JobSpec::parse(text, limits) {
            Ok(spec) => {
                let id = spec.id.unwrap_or_else(JobId::generate);
                if let Some(first) = seen.insert(id, line) {
                    refuse(FieldError {
                        field: "id",
                        reason: format!("{id} is also the id of line {first}"),
                    });
                    continue;
                }
                if jobs.len() >= limits.max_jobs_per_batch {
                    return Err(InputError::TooLarge(format!(
                        "more than {} jobs in one batch; split the file",
                        limits.max_jobs_per_batch
                    )));
                }
                jobs.push(NewJob { id, spec });
            }
            Err(error) => refuse(error),
        }
    }
    if total_errors > 0 {
        return Err(InputError::Invalid {
            errors,
            total: total_errors,
        });
    }
    if jobs.is_empty() {
        return Err(InputError::Empty);
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_line_is_named_with_its_field() {
        let text =
            "{\"prompt\":\"ok\"}\n\n{\"prompt\":\"x\",\"width\":0}\nnot json\n{\"prompt\":\"\"}\n";
        let Err(InputError::Invalid { errors, total }) =
            parse_jsonl(text.as_bytes(), &Limits::default())
        else {
            panic!("accepted invalid lines");
        };
        assert_eq!(total, 3);
        assert_eq!((errors[0].line, errors[0].error.field), (3, "width"));
        assert_eq!(errors[1].line, 4);
        assert_eq!((errors[2].line, errors[2].error.field), (5, "prompt"));
    }

    /// A line of 50 MB is refused with its line number while the buffer holding it
    /// never grows past the limit, and the lines after it are still read.
    #[test]
    fn an_over_long_line_is_refused_without_being_kept() {
        let limits = Limits::default();
        let huge = std::io::repeat(b'a').take(50 << 20);
        let text = std::io::Cursor::new(b"{\"prompt\":\"one\"}\n".to_vec())
            .chain(huge)
            .chain(&b"\n{\"prompt\":\"three\",\"width\":0}\n"[..]);
        let mut reader = BufReader::new(text);
        let mut buf = Vec::new();
        let mut lengths = Vec::new();
        while let Some(length) =
            read_line_capped(&mut reader, &mut buf, limits.max_line_bytes).unwrap()
        {
            assert!(
                buf.len() <= limits.max_line_bytes + 2,
                "kept {} bytes",
                buf.len()
            );
            lengths.push(match length {
                LineLength::Within => None,
                LineLength::Over(n) => Some(n),
            });
            buf.clear();
        }
        assert_eq!(lengths, vec![None, Some(50 << 20), None]);

        let huge = std::io::repeat(b'a').take(1 << 20);
        let text = std::io::Cursor::new(b"{\"prompt\":\"one\"}\n".to_vec())
            .chain(huge)
            .chain(&b"\n{\"prompt\":\"three\",\"width\":0}\n"[..]);
        let Err(InputError::Invalid { errors, total }) = parse_jsonl(text, &limits) else {
            panic!("accepted an over-long line");
        };
        assert_eq!(total, 2);
        assert_eq!((errors[0].line, errors[0].error.field), (2, "line"));
        assert!(
            errors[0].error.reason.contains("1048576 bytes"),
            "{}",
            errors[0].error.reason
        );
        assert_eq!((errors[1].line, errors[1].error.field), (3, "width"));
    }

    #[test]
    fn invalid_utf8_and_duplicate_ids_are_refused() {
        let id = uuid::Uuid::new_v4();
        let mut text =
            format!("{{\"prompt\":\"a\",\"id\":\"{id}\"}}\n{{\"prompt\":\"b\",\"id\":\"{id}\"}}\n")
                .into_bytes();
        text.extend_from_slice(b"{\"prompt\":\"\xff\"}\n");
        let Err(InputError::Invalid { errors, .. }) = parse_jsonl(&text[..], &Limits::default())
        else {
            panic!("accepted");
        };
        assert_eq!((errors[0].line, errors[0].error.field), (2, "id"));
        assert_eq!((errors[1].line, errors[1].error.field), (3, "line"));
    }
}
