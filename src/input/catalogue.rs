//! Catalogues: a CSV of products becomes jobs through a prompt template
//! (`studio photo of {name} in {color}`), `--variants` jobs per row with different
//! seeds, and an object key template (`{sku}/{variant}`). Every row is checked before
//! anything is queued; an error names the line and the column.

use std::{collections::HashMap, collections::HashSet, path::Path};

use serde_json::{Map, Value};

use super::{InputError, LineError, SubmitOptions, error::push};
use crate::job::{FieldError, JobId, JobSpec, Limits, NewJob, validate_output_key};

/// A template over a row's columns: `{column}` is replaced, `{{` and `}}` are braces.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Column(String),
}

impl Template {
    /// Parses a template; an unclosed or empty `{…}` or a lone `}` is refused.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut text_buf = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text_buf.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text_buf.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("`{{{name}` is not closed with `}}`")),
                        }
                    }
                    let name = name.trim().to_string();
                    if name.is_empty() {
                        return Err("`{}` names no column".into());
                    }
                    if !text_buf.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text_buf)));
                    }
                    parts.push(Part::Column(name));
                }
                '}' => return Err("a lone `}` (write `}}` for a brace)".into()),
                c => text_buf.push(c),
            }
        }
        if !text_buf.is_empty() {
            parts.push(Part::Text(text_buf));
        }
        Ok(Template { parts })
    }

    /// The columns (and built-in names) the template uses.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Column(c) => Some(c.as_str()),
            Part::Text(_) => None,
        })
    }

    /// The text with each `{column}` replaced by `value(column)`.
    pub fn render(&self, value: impl Fn(&str) -> String) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.clone(),
                Part::Column(c) => value(c),
            })
            .collect()
    }
}

/// How rows become jobs.
#[derive(Debug, Clone)]
pub struct Catalogue {
    /// The prompt over the row's columns (`--template`).
    pub template: Template,
    /// The object key over the columns (`--key`), if any.
    pub key: Option<Template>,
    /// Variants per row and the defaults for fields the rows do not set.
    pub options: SubmitOptions,
}

/// Names the key template may use besides the columns.
const KEY_NAMES: [&str; 2] = ["variant", "job_id"];
/// Most jobs one row may make (`--variants`).
pub const MAX_VARIANTS: u32 = 64;

/// A seed per (prompt, variant): the same row and variant render the same image
/// when the catalogue is submitted again.
fn variant_seed(prompt: &str, variant: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prompt.bytes().chain(variant.to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h & (i64::MAX as u64)
}

impl Catalogue {
    /// Reads and checks a whole CSV file; returns its jobs, or every refusal (up to 20).
    pub fn read(&self, path: &Path, limits: &Limits) -> Result<Vec<NewJob>, InputError> {
        let io = |source| InputError::Io {
            path: path.display().to_string(),
            source,
        };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > limits.max_file_bytes {
            return Err(InputError::TooLarge(format!(
                "{} is {size} bytes, over the limit of {} bytes per submit; split it",
                path.display(),
                limits.max_file_bytes
            )));
        }
        let file = std::fs::File::open(path).map_err(io)?;
        self.parse(file, limits)
    }

    /// Reads and checks CSV text; returns its jobs, or every refusal (up to 20).
    pub fn parse(
        &self,
        input: impl std::io::Read,
        limits: &Limits,
    ) -> Result<Vec<NewJob>, InputError> {
        if self.options.variants == 0 || self.options.variants > MAX_VARIANTS {
            return Err(InputError::Options(format!(
                "--variants {} is outside the limit 1..={MAX_VARIANTS}",
                self.options.variants
            )));
        }
        let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(input);
        let header: Vec<String> = match reader.headers() {
            Ok(h) => h.iter().map(|c| c.trim().to_string()).collect(),
            Err(e) => return Err(invalid(1, None, "line", format!("unreadable header: {e}"))),
        };
        let index: HashMap<&str, usize> = header
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        // A template naming a column the file lacks is refused before any row is read.
        let uses = self.template.columns().map(|c| (c, "--template")).chain(
            self.key
                .iter()
                .flat_map(|k| k.columns().map(|c| (c, "--key"))),
        );
        for (col, flag) in uses {
            let known = index.contains_key(col) || (flag == "--key" && KEY_NAMES.contains(&col));
            if !known {
                return Err(invalid(
                    1,
                    Some(col),
                    "line",
                    format!(
                        "{flag} uses column `{col}`, which the file does not have (columns: {})",
                        header.join(", ")
                    ),
                ));
            }
        }
        let mut jobs = Vec::new();
        let mut errors = Vec::new();
        let mut total = 0;
        let mut keys: HashMap<String, usize> = HashMap::new();
        let mut record = csv::StringRecord::new();
        loop {
            let line = reader.position().line() as usize;
            match reader.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    total += 1;
                    push(
                        &mut errors,
                        LineError {
                            line: line.max(2),
                            column: None,
                            error: field("line", e.to_string()),
                        },
                    );
                    continue;
                }
            }
            let line = record.position().map(|p| p.line() as usize).unwrap_or(line);
            match self.row_jobs(&header, &index, &record, line, limits, &mut keys) {
                Ok(mut row) => {
                    if jobs.len() + row.len() > limits.max_jobs_per_batch {
                        return Err(InputError::TooLarge(format!(
                            "more than {} jobs in one batch; split the file",
                            limits.max_jobs_per_batch
                        )));
                    }
                    jobs.append(&mut row);
                }
                Err(e) => {
                    total += 1;
                    push(&mut errors, e);
                }
            }
        }
        if total > 0 {
            return Err(InputError::Invalid { errors, total });
        }
        if jobs.is_empty() {
            return Err(InputError::Empty);
        }
        Ok(jobs)
    }

    fn row_jobs(
        &self,
        header: &[String],
        index: &HashMap<&str, usize>,
        record: &csv::StringRecord,
        line: usize,
        limits: &Limits,
        keys: &mut HashMap<String, usize>,
    ) -> Result<Vec<NewJob>, LineError> {
        let cell = |c: &str| {
            index
                .get(c)
                .and_then(|&i| record.get(i))
                .unwrap_or("")
                .trim()
        };
        let used = self
            .template
            .columns()
            .chain(self.key.iter().flat_map(|k| k.columns()))
            .filter(|c| !KEY_NAMES.contains(c) || index.contains_key(c));
        let mut seen = HashSet::new();
        for col in used {
            if seen.insert(col) && cell(col).is_empty() {
                return Err(LineError {
                    line,
                    column: Some(col.to_string()),
                    error: field("line", "is empty, and a template uses it".to_string()),
                });
            }
        }
        let prompt = self.template.render(|c| cell(c).to_string());
        let metadata: Map<String, Value> = header
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), Value::from(record.get(i).unwrap_or(""))))
            .collect();
        let mut jobs = Vec::with_capacity(self.options.variants as usize);
        for variant in 0..self.options.variants {
            let id = JobId::generate();
            let mut job = Map::new();
            job.insert("prompt".into(), Value::from(prompt.clone()));
            job.insert("seed".into(), Value::from(variant_seed(&prompt, variant)));
            job.insert("metadata".into(), Value::Object(metadata.clone()));
            if let Some(key) = &self.key {
                let key = key.render(|c| match c {
                    "variant" if !index.contains_key("variant") => variant.to_string(),
                    "job_id" if !index.contains_key("job_id") => id.to_string(),
                    c => cell(c).to_string(),
                });
                validate_output_key(&key, limits.max_output_key_len).map_err(|error| {
                    LineError {
                        line,
                        column: None,
                        error,
                    }
                })?;
                if let Some(first) = keys.insert(key.clone(), line) {
                    return Err(LineError {
                        line,
                        column: None,
                        error: field(
                            "output_key",
                            format!(
                                "`{key}` is also the key of line {first}; make --key unique (add {{variant}} or a unique column)"
                            ),
                        ),
                    });
                }
                job.insert("output_key".into(), Value::from(key));
            }
            self.options.apply_job_defaults(&mut job);
            let spec: JobSpec =
                serde_json::from_value(Value::Object(job)).map_err(|e| LineError {
                    line,
                    column: None,
                    error: field("line", e.to_string()),
                })?;
            spec.validate(limits).map_err(|error| LineError {
                line,
                column: None,
                error,
            })?;
            jobs.push(NewJob { id, spec });
        }
        Ok(jobs)
    }
}

fn field(name: &'static str, reason: String) -> FieldError {
    FieldError {
        field: name,
        reason,
    }
}

fn invalid(line: usize, column: Option<&str>, name: &'static str, reason: String) -> InputError {
    InputError::Invalid {
        errors: vec![LineError {
            line,
            column: column.map(str::to_string),
            error: field(name, reason),
        }],
        total: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogue(template: &str, variants: u32, key: Option<&str>) -> Catalogue {
        Catalogue {
            template: Template::parse(template).unwrap(),
            key: key.map(|k| Template::parse(k).unwrap()),
            options: SubmitOptions {
                variants,
                width: Some(64),
                height: Some(64),
                ..Default::default()
            },
        }
    }

    #[test]
    fn templates_parse_columns_and_escapes() {
        let t = Template::parse("a {name} in {{braces}} {color}").unwrap();
        assert_eq!(t.columns().collect::<Vec<_>>(), ["name", "color"]);
        assert_eq!(t.render(|c| c.to_uppercase()), "a NAME in {braces} COLOR");
        assert!(Template::parse("open {name").is_err());
        assert!(Template::parse("empty {}").is_err());
        assert!(Template::parse("lone }").is_err());
    }

    #[test]
    fn rows_become_variants_with_keys_seeds_and_metadata() {
        let csv = "sku,name,color\nA1,\"chair, oak\",rouge\nB2,lampe à poser,bleu\n";
        let jobs = catalogue("photo of {name} in {color}", 3, Some("{sku}/{variant}"))
            .parse(csv.as_bytes(), &Limits::default())
            .unwrap();
        assert_eq!(jobs.len(), 6);
        assert_eq!(jobs[0].spec.prompt, "photo of chair, oak in rouge");
        assert_eq!(jobs[4].spec.prompt, "photo of lampe à poser in bleu");
        let keys: Vec<_> = jobs
            .iter()
            .map(|j| j.spec.output_key.clone().unwrap())
            .collect();
        assert_eq!(keys, ["A1/0", "A1/1", "A1/2", "B2/0", "B2/1", "B2/2"]);
        let seeds: HashSet<_> = jobs.iter().map(|j| j.spec.seed.unwrap()).collect();
        assert_eq!(seeds.len(), 6, "a different seed per variant");
        assert_eq!(jobs[0].spec.width, 64, "defaults applied");
        let meta = jobs[0].spec.metadata.as_ref().unwrap();
        assert_eq!(meta["name"], "chair, oak");
        assert_eq!(meta["sku"], "A1");
    }

    #[test]
    fn bad_catalogues_are_refused_with_line_and_column() {
        let l = Limits::default();
        let e = catalogue("photo of {colour}", 1, None)
            .parse("sku,color\nA,red\n".as_bytes(), &l)
            .unwrap_err();
        assert!(
            e.to_string().contains("`colour`") && e.to_string().contains("sku, color"),
            "{e}"
        );
        let e = catalogue("photo of {color}", 1, None)
            .parse("sku,color\nA,red\nB,\n".as_bytes(), &l)
            .unwrap_err();
        assert!(
            e.to_string().contains("line 3: column `color`: is empty"),
            "{e}"
        );
        let e = catalogue("photo of {color}", 2, Some("{sku}"))
            .parse("sku,color\nA,red\n".as_bytes(), &l)
            .unwrap_err();
        assert!(
            e.to_string().contains("line 2") && e.to_string().contains("also the key of line 2"),
            "{e}"
        );
        let e = catalogue("photo of {color}", 1, Some("{sku}"))
            .parse("sku,color\nA,red\nA,blue\n".as_bytes(), &l)
            .unwrap_err();
        assert!(e.to_string().contains("line 3: field `output_key`"), "{e}");
        let e = catalogue("photo of {color}", 1, Some("../{sku}"))
            .parse("sku,color\nA,red\n".as_bytes(), &l)
            .unwrap_err();
        assert!(e.to_string().contains("line 2: field `output_key`"), "{e}");
    }
}
