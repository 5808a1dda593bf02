//! Which models a worker serves and how: the options `renderq worker` and `renderq
//! run` flatten into their command lines, and the renderers built from them.

use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::Args;

use super::{
    PanicOn, RemoteConfig, RemoteRenderer, Renderers,
    diffusion::{self, Architecture, DiffusionRenderer, WeightSource},
    remote::{DEFAULT_MAX_RESPONSE_BYTES, Flavor, ResponseFormat},
};

/// The Stable Diffusion models this worker serves, and on what.
#[derive(Args, Debug, Clone)]
pub struct DiffusionOptions {
    /// Diffusion models to serve, comma-separated: directories under --models-dir
    /// (their configs say what they are), single-file checkpoints there (NAME for
    /// NAME.safetensors), or the presets sd-1.5, sd-2.1, sd-turbo, sdxl, sdxl-turbo
    #[arg(long, env = "RENDERQ_DIFFUSION", value_delimiter = ',')]
    pub diffusion: Vec<String>,
    /// Where their weights are, named as jobs name the model: a directory per model in
    /// the diffusers layout or a Hugging Face cache entry, or a NAME.safetensors
    /// checkpoint in the original Stability layout (with an optional NAME.json)
    #[arg(long, env = "RENDERQ_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// Download missing weights from the Hugging Face hub instead (needs a network)
    #[arg(long, env = "RENDERQ_HUB")]
    pub hub: bool,
    /// cpu, cuda, cuda:N or metal (GPU builds need --features cuda or metal); several,
    /// comma-separated (cuda:0,cuda:1), make one lane per device: each model loads on
    /// every one, and a batch goes to whichever is free first
    #[arg(long, env = "RENDERQ_DEVICE", default_value = "cpu")]
    pub device: String,
    /// f32, f16 or bf16 (default: f32 on CPU, f16 on GPUs)
    #[arg(long, env = "RENDERQ_DTYPE")]
    pub dtype: Option<String>,
    /// Computes attention this many heads (of all the batch's images) at a time, to
    /// lower peak memory at some cost in speed; 0 (the default) computes it whole
    #[arg(long, env = "RENDERQ_ATTENTION_SLICE")]
    pub attention_slice: Option<usize>,
}

impl DiffusionOptions {
    /// What `model` is made of and where its weights are: a directory with its own
    /// configs (any SD 1.x, 2.x, SDXL or Turbo fine-tune), else a single-file
    /// checkpoint `<model>.safetensors`, else the preset of that name.
    fn resolve(&self, model: &str) -> Result<(Architecture, WeightSource), String> {
        crate::job::validate_model_name(model)
            .map_err(|e| format!("--diffusion `{model}`: {}", e.reason))?;
        let dir = self.models_dir.join(model);
        let root = diffusion::weights::snapshot(&dir);
        if !self.hub && diffusion::config::has_configs(&root) {
            let arch = diffusion::config::read(&root, model)
                .map_err(|e| format!("--diffusion `{model}`: {e}"))?;
            return Ok((arch, WeightSource::Local(dir)));
        }
        if let Some(file) = (!self.hub)
            .then(|| diffusion::checkpoint::find(&self.models_dir, model))
            .flatten()
        {
            let found = diffusion::checkpoint::read(&file)
                .map_err(|e| format!("--diffusion `{model}`: {e}"))?;
            return Ok((found.arch, WeightSource::Checkpoint(file)));
        }
        let arch = Architecture::preset(model).ok_or_else(|| {
            let stem = model.strip_suffix(".safetensors");
            match stem {
                Some(stem) => format!(
                    "--diffusion `{model}`: a checkpoint's model is named without its \
                     extension: --diffusion {stem}"
                ),
                None => format!(
                    "--diffusion: unknown model `{model}`: {} has no model_index.json (a model \
                     saved by diffusers), there is no {model}.safetensors beside it (a \
                     single-file checkpoint), and it is not a preset ({})",
                    root.display(),
                    diffusion::PRESETS.join(", ")
                ),
            }
        })?;
        let source = if self.hub {
            WeightSource::Hub
        } else {
            WeightSource::Local(dir)
        };
        Ok((arch, source))
    }

    /// Adds a renderer per `--diffusion` model; an unknown name or device is refused.
    pub fn add_to(&self, renderers: &mut Renderers, poison: &PanicOn) -> Result<(), String> {
        if self.diffusion.is_empty() {
            return Ok(());
        }
        let devices: Vec<_> = self
            .device
            .split(',')
            .map(|d| diffusion::device(d.trim()))
            .collect::<Result<_, _>>()?;
        let device = devices[0].clone();
        let dtype = match &self.dtype {
            Some(d) => diffusion::dtype(d, &device)?,
            None => diffusion::default_dtype(&device),
        };
        let slice = self.attention_slice.filter(|&n| n > 0);
        for model in &self.diffusion {
            let model = model.trim();
            let (mut arch, source) = self.resolve(model)?;
            // The flag decides, whatever the model's source: configs and checkpoints
            // never ask for slicing.
            arch.unet.sliced_attention_size = slice;
            let on = |device: &candle_core::Device| -> Arc<dyn super::Renderer> {
                let r = DiffusionRenderer::new(
                    model,
                    arch.clone(),
                    source.clone(),
                    device.clone(),
                    dtype,
                );
                Arc::new(r.panicking_on(poison.clone()))
            };
            let renderer = match devices.as_slice() {
                [one] => on(one),
                several => Arc::new(
                    super::pool::DevicePool::new(several.iter().map(on).collect())
                        .map_err(|e| format!("--device {}: {e}", self.device))?,
                ),
            };
            renderers.insert(model, renderer);
        }
        Ok(())
    }
}

/// The images endpoint behind `remote/<name>` models. The bearer key is read from
/// `RENDERQ_REMOTE_API_KEY` only: a flag would show it in `ps`.
#[derive(Args, Debug, Clone)]
pub struct RemoteOptions {
    /// OpenAI-style images API serving `remote/<name>` (e.g. http://npu-host:30000/v1)
    #[arg(long, env = "RENDERQ_REMOTE_URL")]
    pub remote_url: Option<String>,
    /// The API's dialect (default: zhipu for URLs under /api/paas/, else openai)
    #[arg(long, env = "RENDERQ_REMOTE_FLAVOR", value_enum)]
    pub remote_flavor: Option<Flavor>,
    /// How an openai-flavoured endpoint returns images
    #[arg(
        long,
        env = "RENDERQ_REMOTE_RESPONSE_FORMAT",
        value_enum,
        default_value = "b64_json"
    )]
    pub remote_response_format: ResponseFormat,
    /// Requests in flight to the endpoint (set --max-batch at least as high)
    #[arg(long, env = "RENDERQ_REMOTE_CONCURRENCY", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub remote_concurrency: u32,
    /// Seconds one request may take, generation included
    #[arg(long, env = "RENDERQ_REMOTE_TIMEOUT_SECS", default_value_t = 300.0)]
    pub remote_timeout_secs: f64,
    /// Tries per job within one render on 429, 5xx and timeouts (then the job's retry)
    #[arg(long, env = "RENDERQ_REMOTE_ATTEMPTS", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub remote_attempts: u32,
    /// Largest response body read from the endpoint, in bytes (a larger one fails the job)
    #[arg(long, env = "RENDERQ_REMOTE_MAX_RESPONSE_BYTES",
          default_value_t = DEFAULT_MAX_RESPONSE_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(1024..=(1 << 32)))]
    pub remote_max_response_bytes: u64,
}

impl RemoteOptions {
    /// The endpoint's configuration; `None` without `--remote-url`.
    pub fn config(&self) -> Result<Option<RemoteConfig>, String> {
        let Some(url) = &self.remote_url else {
            return Ok(None);
        };
        if !(self.remote_timeout_secs.is_finite() && self.remote_timeout_secs > 0.0) {
            return Err("--remote-timeout-secs must be a positive number of seconds".into());
        }
        let mut cfg = RemoteConfig::new(url);
        cfg.api_key = std::env::var("RENDERQ_REMOTE_API_KEY")
            .ok()
            .filter(|k| !k.is_empty());
        if let Some(flavor) = self.remote_flavor {
            cfg.flavor = flavor;
        }
        cfg.response_format = self.remote_response_format;
        cfg.concurrency = self.remote_concurrency as usize;
        cfg.timeout = Duration::from_secs_f64(self.remote_timeout_secs);
        cfg.attempts = self.remote_attempts;
        cfg.max_response_bytes = self.remote_max_response_bytes as usize;
        Ok(Some(cfg))
    }
}

impl Renderers {
    /// The built-in models, then the diffusion models and the remote endpoint asked
    /// for. `panic_on` is for failure drills (see `--panic-on`).
    pub fn configured(
        noop_delay_ms: u64,
        panic_on: Option<String>,
        diffusion: &DiffusionOptions,
        remote: &RemoteOptions,
    ) -> Result<Renderers, String> {
        let poison = PanicOn::new(panic_on);
        let mut renderers = Renderers::builtin_panicking(noop_delay_ms, poison.clone());
        diffusion.add_to(&mut renderers, &poison)?;
        if let Some(cfg) = remote.config()? {
            renderers.insert_remote(RemoteRenderer::new(cfg)?);
        }
        Ok(renderers)
    }
}
