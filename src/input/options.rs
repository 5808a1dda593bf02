//! The options of a submit: how a file becomes jobs. One struct, flattened into
//! `renderq submit` and `renderq schedule add`, and stored with a schedule as JSON.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Catalogue, InputError, Template};
use crate::job::{ImageFormat, Sampler};

/// How a file becomes jobs: attempts, the CSV templates and variants, and defaults for the fields a job does not set.
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitOptions {
    /// Attempts per job before it is marked failed
    #[arg(long, env = "RENDERQ_MAX_ATTEMPTS", default_value_t = 3)]
    #[serde(default = "three")]
    pub max_attempts: i32,
    /// CSV: the prompt over the row's columns, e.g. 'studio photo of {name} in {color}'
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// CSV: jobs per row, each with its own seed
    #[arg(long, default_value_t = 1)]
    #[serde(default = "one")]
    pub variants: u32,
    /// CSV: the object key over the columns, {variant} (0-based) and {job_id}; the
    /// extension is added
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Default width for jobs that set none
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Default height for jobs that set none
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Default model for jobs that set none
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Default steps for jobs that set none
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    /// Default scheduler (ddim, euler, euler_a, dpmpp_2m, lcm) for jobs that set none
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<Sampler>,
    /// Default format (png, webp, jpeg) for jobs that set none
    #[arg(long, value_parser = parse_format)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
}

fn one() -> u32 {
    1
}

fn three() -> i32 {
    3
}

impl Default for SubmitOptions {
    fn default() -> Self {
        SubmitOptions {
            max_attempts: three(),
            template: None,
            variants: one(),
            key: None,
            width: None,
            height: None,
            model: None,
            steps: None,
            scheduler: None,
            format: None,
        }
    }
}

fn parse_format(text: &str) -> Result<ImageFormat, String> {
    serde_json::from_value(Value::from(text))
        .map_err(|_| format!("`{text}` is not one of png, webp, jpeg"))
}

impl SubmitOptions {
    /// Whether any default for the jobs' own fields is set.
    pub fn has_job_defaults(&self) -> bool {
        self.width.is_some()
            || self.height.is_some()
            || self.model.is_some()
            || self.steps.is_some()
            || self.scheduler.is_some()
            || self.format.is_some()
    }

    /// Adds the defaults a job object lacks.
    pub fn apply_job_defaults(&self, job: &mut Map<String, Value>) {
        let mut set = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                job.entry(k.to_string()).or_insert(v);
            }
        };
        set("width", self.width.map(Value::from));
        set("height", self.height.map(Value::from));
        set("model", self.model.clone().map(Value::from));
        set("steps", self.steps.map(Value::from));
        set("scheduler", self.scheduler.map(|s| Value::from(s.name())));
        set(
            "format",
            self.format
                .map(|f| Value::from(f.extension().replace("jpg", "jpeg"))),
        );
    }

    /// The catalogue, when the file is CSV (a template is given).
    pub fn catalogue(&self) -> Result<Option<Catalogue>, InputError> {
        let Some(template) = &self.template else {
            return Ok(None);
        };
        let parse = |flag: &str, t: &str| {
            Template::parse(t).map_err(|e| InputError::Options(format!("{flag}: {e}")))
        };
        Ok(Some(Catalogue {
            template: parse("--template", template)?,
            key: self.key.as_deref().map(|k| parse("--key", k)).transpose()?,
            options: self.clone(),
        }))
    }
}
