//! The job JSON (`JobSpec`), its limits and its validation at the edge.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::JobId;

/// Image encodings a job can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// PNG, lossless (the default).
    #[default]
    Png,
    /// WebP, lossless.
    Webp,
    /// JPEG (`jpg` is accepted too).
    #[serde(alias = "jpg")]
    Jpeg,
}

impl ImageFormat {
    /// The file extension object keys get.
    pub fn extension(&self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
            ImageFormat::Jpeg => "jpg",
        }
    }

    /// The MIME type stored with the object.
    pub fn content_type(&self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Webp => "image/webp",
            ImageFormat::Jpeg => "image/jpeg",
        }
    }
}

/// How a diffusion model's latents go from noise to an image (the job's `scheduler`).
/// Each is deterministic per seed: the ones that add noise at each step (`euler_a`,
/// `lcm`) draw it from the job's seed on the host, so the image depends on the seed
/// alone, never on the device or the other jobs of its batch. Other models ignore it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    /// DDIM without added noise: the default, good from about 20 steps.
    #[default]
    Ddim,
    /// Euler: deterministic, good from about 20 steps.
    Euler,
    /// Euler ancestral: adds noise at each step (from the seed); softer, varied images.
    #[serde(rename = "euler_a")]
    EulerA,
    /// DPM++ 2M with Karras sigmas: sharp images in 15 to 25 steps.
    #[serde(rename = "dpmpp_2m")]
    Dpmpp2m,
    /// Latent consistency: 2 to 8 steps, for LCM-distilled models (at most 50 steps).
    Lcm,
}

impl Sampler {
    /// Every sampler, in the order the documentation lists them.
    pub const ALL: [Sampler; 5] = [
        Sampler::Ddim,
        Sampler::Euler,
        Sampler::EulerA,
        Sampler::Dpmpp2m,
        Sampler::Lcm,
    ];

    /// Its name in the job JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Sampler::Ddim => "ddim",
            Sampler::Euler => "euler",
            Sampler::EulerA => "euler_a",
            Sampler::Dpmpp2m => "dpmpp_2m",
            Sampler::Lcm => "lcm",
        }
    }

    /// The most steps it takes: LCM picks its steps from a 50-step schedule.
    pub fn max_steps(&self) -> Option<u32> {
        match self {
            Sampler::Lcm => Some(LCM_MAX_STEPS),
            _ => None,
        }
    }
}

/// The steps of the schedule LCM picks its steps from (diffusers' `original_inference_steps`).
pub const LCM_MAX_STEPS: u32 = 50;

impl std::str::FromStr for Sampler {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Sampler::ALL
            .into_iter()
            .find(|s| s.name() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = Sampler::ALL.iter().map(|s| s.name()).collect();
                format!("`{text}` is not one of {}", names.join(", "))
            })
    }
}

/// The job JSON: one line of a submit file, or the `job` field of a raw Redis message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// What to draw.
    pub prompt: String,
    /// What to steer away from (diffusion models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    /// Width in pixels (512 by default).
    #[serde(default = "default_side")]
    pub width: u32,
    /// Height in pixels (512 by default).
    #[serde(default = "default_side")]
    pub height: u32,
    /// Denoising steps (the model's default if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    /// Classifier-free guidance scale (the model's default if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f64>,
    /// The sampler of diffusion models (`ddim` if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<Sampler>,
    /// The seed; without it one is derived from the job's id and recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The model that renders it (`placeholder` by default).
    #[serde(default = "default_model")]
    pub model: String,
    /// The image encoding.
    #[serde(default)]
    pub format: ImageFormat,
    /// Higher is claimed first; 0 by default, within ±1000.
    #[serde(default)]
    pub priority: i32,
    /// The producer's own id for the job; a repeated id makes no second job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<JobId>,
    /// The object key under the store's prefix (the extension is added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_key: Option<String>,
    /// The producer's own data, kept with the job (CSV rows keep their columns here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The model of a job that names none.
pub const DEFAULT_MODEL: &str = "placeholder";

/// A job's `priority` lies within ±this; higher is claimed first, 0 by default.
pub const MAX_PRIORITY: i32 = 1000;

fn default_side() -> u32 {
    512
}

fn default_model() -> String {
    DEFAULT_MODEL.to_string()
}

/// Limits enforced at the edge. Each error names the limit it broke.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest prompt, in characters.
    pub max_prompt_chars: usize,
    /// Smallest width or height.
    pub min_side: u32,
    /// Largest width or height.
    pub max_side: u32,
    /// Most pixels in one image.
    pub max_pixels: u64,
    /// Most denoising steps.
    pub max_steps: u32,
    /// Largest guidance scale.
    pub max_guidance: f64,
    /// Longest `output_key`, in bytes.
    pub max_output_key_len: usize,
    /// Largest `metadata`, in bytes of JSON.
    pub max_metadata_bytes: usize,
    /// Longest line of a submit file (one job), in bytes.
    pub max_line_bytes: usize,
    /// Largest submit file, in bytes.
    pub max_file_bytes: u64,
    /// Most jobs in one batch.
    pub max_jobs_per_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_prompt_chars: 4000,
            min_side: 8,
            max_side: 4096,
            max_pixels: 4096 * 4096,
            max_steps: 200,
            max_guidance: 100.0,
            max_output_key_len: 512,
            max_metadata_bytes: 16 * 1024,
            max_line_bytes: 64 * 1024,
            max_file_bytes: 1 << 30,
            max_jobs_per_batch: 1_000_000,
        }
    }
}

/// A job refused at the edge: which field, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct FieldError {
    /// The field at fault (`line` for the line as a whole).
    pub field: &'static str,
    /// Why, naming the limit it broke.
    pub reason: String,
}

fn refuse(field: &'static str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field,
        reason: reason.into(),
    }
}

impl JobSpec {
    /// Parses one job from JSON text and validates it.
    pub fn parse(text: &str, limits: &Limits) -> Result<JobSpec, FieldError> {
        if text.len() > limits.max_line_bytes {
            return Err(refuse(
                "line",
                format!(
                    "{} bytes is over the limit of {} bytes per job",
                    text.len(),
                    limits.max_line_bytes
                ),
            ));
        }
        let de = &mut serde_json::Deserializer::from_str(text);
        let spec: JobSpec = serde_path_to_error::deserialize(de).map_err(json_field_error)?;
        spec.validate(limits)?;
        Ok(spec)
    }

    /// Checks every field against the limits.
    pub fn validate(&self, limits: &Limits) -> Result<(), FieldError> {
        if self.prompt.trim().is_empty() {
            return Err(refuse("prompt", "must not be empty"));
        }
        let chars = self.prompt.chars().count();
        if chars > limits.max_prompt_chars {
            return Err(refuse(
                "prompt",
                format!(
                    "{chars} characters is over the limit of {}",
                    limits.max_prompt_chars
                ),
            ));
        }
        if let Some(neg) = &self.negative_prompt
            && neg.chars().count() > limits.max_prompt_chars
        {
            return Err(refuse(
                "negative_prompt",
                format!("over the limit of {} characters", limits.max_prompt_chars),
            ));
        }
        for (field, side) in [("width", self.width), ("height", self.height)] {
            if side < limits.min_side || side > limits.max_side {
                return Err(refuse(
                    field,
                    format!(
                        "{side} is outside the limit {}..={}",
                        limits.min_side, limits.max_side
                    ),
                ));
            }
        }
        let pixels = self.width as u64 * self.height as u64;
        if pixels > limits.max_pixels {
            return Err(refuse(
                "width",
                format!(
                    "{}x{} is {pixels} pixels, over the limit of {}",
                    self.width, self.height, limits.max_pixels
                ),
            ));
        }
        if let Some(steps) = self.steps
            && (steps == 0 || steps > limits.max_steps)
        {
            return Err(refuse(
                "steps",
                format!("{steps} is outside the limit 1..={}", limits.max_steps),
            ));
        }
        if let (Some(steps), Some(most)) = (self.steps, self.sampler().max_steps())
            && steps > most
        {
            return Err(refuse(
                "steps",
                format!(
                    "{steps} is over the limit of {most} for the `{}` scheduler",
                    self.sampler().name()
                ),
            ));
        }
        if let Some(g) = self.guidance
            && (!g.is_finite() || !(0.0..=limits.max_guidance).contains(&g))
        {
            return Err(refuse(
                "guidance",
                format!("{g} is outside the limit 0..={}", limits.max_guidance),
            ));
        }
        if let Some(seed) = self.seed
            && seed > i64::MAX as u64
        {
            return Err(refuse(
                "seed",
                format!("{seed} is over the limit {}", i64::MAX),
            ));
        }
        if !(-MAX_PRIORITY..=MAX_PRIORITY).contains(&self.priority) {
            return Err(refuse(
                "priority",
                format!(
                    "{} is outside the limit -{MAX_PRIORITY}..={MAX_PRIORITY}",
                    self.priority
                ),
            ));
        }
        validate_model_name(&self.model)?;
        if let Some(key) = &self.output_key {
            validate_output_key(key, limits.max_output_key_len)?;
        }
        if let Some(meta) = &self.metadata {
            let len = serde_json::to_string(meta).map(|s| s.len()).unwrap_or(0);
            if len > limits.max_metadata_bytes {
                return Err(refuse(
                    "metadata",
                    format!(
                        "{len} bytes is over the limit of {}",
                        limits.max_metadata_bytes
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The sampler it renders with: its own, else `ddim`.
    pub fn sampler(&self) -> Sampler {
        self.scheduler.unwrap_or_default()
    }

    /// The seed this job renders with: its own, else one derived from its id.
    pub fn effective_seed(&self, id: JobId) -> u64 {
        self.seed.unwrap_or_else(|| id.default_seed())
    }
}

/// Models every worker knows by name: the built-ins and the Stable Diffusion presets.
/// A job may also name `remote/<name>` (an images endpoint) or a model directory
/// under a worker's `--models-dir`; a worker fails a job whose model it does not serve.
pub const KNOWN_MODELS: [&str; 7] = [
    "placeholder",
    "noop",
    "sd-1.5",
    "sd-2.1",
    "sdxl",
    "sd-turbo",
    "sdxl-turbo",
];

/// Whether a job may name `model` (a worker then serves it or fails the job).
pub fn validate_model_name(model: &str) -> Result<(), FieldError> {
    if let Some(name) = model.strip_prefix("remote/") {
        let ok = !name.is_empty()
            && name.len() <= 120
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:".contains(c));
        return if ok {
            Ok(())
        } else {
            Err(refuse(
                "model",
                "a remote model name must be 1-120 characters of letters, digits and - _ . / :",
            ))
        };
    }
    // A model of a worker's own is named by its directory under `--models-dir`.
    let own = !model.is_empty()
        && model.len() <= 120
        && !model.starts_with('.')
        && model
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if KNOWN_MODELS.contains(&model) || own {
        Ok(())
    } else {
        let shown: String = model.chars().take(64).collect();
        Err(refuse(
            "model",
            format!(
                "`{shown}` is not a model name: one of {}, remote/<name>, or the name of a \
                 model directory under a worker's --models-dir (1-120 letters, digits, - _ .)",
                KNOWN_MODELS.join(", ")
            ),
        ))
    }
}

/// An `output_key` must stay under the store's prefix: no `..`, no absolute path,
/// no backslash, no control characters, no empty segment.
pub fn validate_output_key(key: &str, max_len: usize) -> Result<(), FieldError> {
    let reason = if key.is_empty() {
        Some("must not be empty".to_string())
    } else if key.len() > max_len {
        Some(format!(
            "{} bytes is over the limit of {max_len}",
            key.len()
        ))
    } else if key.starts_with('/') {
        Some("must be relative (it starts with `/`)".into())
    } else if key.contains('\\') {
        Some("must not contain a backslash".into())
    } else if key.chars().any(|c| c.is_control()) {
        Some("must not contain control characters".into())
    } else if key.contains("..") {
        // Stricter than needed (`a..b` cannot escape), and simpler to trust.
        Some("must not contain `..`".into())
    } else if key.split('/').any(|seg| seg.is_empty() || seg == ".") {
        Some("must not contain empty or `.` path segments".into())
    } else {
        None
    };
    match reason {
        Some(r) => Err(refuse("output_key", r)),
        None => Ok(()),
    }
}

/// Turns a parse error into a field error: the path says which field was wrong;
/// serde names missing and unknown fields in its message.
fn json_field_error(e: serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    let path = e.path().to_string();
    let msg = e.into_inner().to_string();
    let field = FIELDS
        .into_iter()
        .find(|f| {
            path == *f
                || path.starts_with(&format!("{f}."))
                || msg.contains(&format!("missing field `{f}`"))
        })
        .unwrap_or("line");
    refuse(field, msg)
}

const FIELDS: [&str; 14] = [
    "negative_prompt",
    "scheduler",
    "output_key",
    "metadata",
    "priority",
    "guidance",
    "prompt",
    "width",
    "height",
    "steps",
    "seed",
    "model",
    "format",
    "id",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_job_gets_defaults() {
        let s = JobSpec::parse(r#"{"prompt":"a red chair"}"#, &Limits::default()).unwrap();
        assert_eq!((s.width, s.height), (512, 512));
        assert_eq!(s.model, "placeholder");
        assert_eq!(s.format, ImageFormat::Png);
    }

    #[test]
    fn errors_name_the_field_and_limit() {
        let l = Limits::default();
        let e = JobSpec::parse(r#"{"prompt":"x","width":99999}"#, &l).unwrap_err();
        assert_eq!(e.field, "width");
        assert!(e.reason.contains("4096"), "{e}");
        let e = JobSpec::parse(r#"{"prompt":"x","steps":0}"#, &l).unwrap_err();
        assert_eq!(e.field, "steps");
        let e = JobSpec::parse(r#"{"width":64}"#, &l).unwrap_err();
        assert_eq!(e.field, "prompt", "{e}");
        let e = JobSpec::parse(r#"{"prompt":"x","width":"big"}"#, &l).unwrap_err();
        assert_eq!(e.field, "width", "{e}");
        let e = JobSpec::parse(r#"{"prompt":"x","colour":"red"}"#, &l).unwrap_err();
        assert!(e.reason.contains("colour"), "{e}");
        let long = "a".repeat(l.max_prompt_chars + 1);
        let e = JobSpec::parse(&format!(r#"{{"prompt":"{long}"}}"#), &l).unwrap_err();
        assert_eq!(e.field, "prompt");
    }

    #[test]
    fn schedulers_are_named_in_the_job_and_refused_by_name() {
        let l = Limits::default();
        for s in Sampler::ALL {
            let job = format!(r#"{{"prompt":"x","scheduler":"{}"}}"#, s.name());
            assert_eq!(JobSpec::parse(&job, &l).unwrap().sampler(), s);
            assert_eq!(s.name().parse::<Sampler>(), Ok(s));
        }
        let plain = JobSpec::parse(r#"{"prompt":"x"}"#, &l).unwrap();
        assert_eq!((plain.scheduler, plain.sampler()), (None, Sampler::Ddim));
        let e = JobSpec::parse(r#"{"prompt":"x","scheduler":"heun"}"#, &l).unwrap_err();
        assert_eq!(e.field, "scheduler", "{e}");
        assert!(e.reason.contains("dpmpp_2m"), "{e}");
        let e = JobSpec::parse(r#"{"prompt":"x","scheduler":"lcm","steps":51}"#, &l).unwrap_err();
        assert_eq!(e.field, "steps", "{e}");
        assert!(e.reason.contains("lcm"), "{e}");
        assert!(JobSpec::parse(r#"{"prompt":"x","scheduler":"lcm","steps":50}"#, &l).is_ok());
        assert!(JobSpec::parse(r#"{"prompt":"x","scheduler":"euler","steps":51}"#, &l).is_ok());
    }

    #[test]
    fn output_keys_cannot_escape_the_prefix() {
        for bad in [
            "../x.png",
            "a/../../b",
            "/etc/passwd",
            "a\\b",
            "a\nb",
            "a//b",
            "./a",
        ] {
            assert!(validate_output_key(bad, 512).is_err(), "{bad:?} accepted");
        }
        assert!(validate_output_key("sku-1/front.png", 512).is_ok());
    }
}
