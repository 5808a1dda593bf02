//! Where a model's files are: a local directory in the diffusers layout (`unet/`,
//! `vae/`, `text_encoder/`, `tokenizer/`), a Hugging Face cache (`models--org--name/
//! snapshots/<rev>/…`), or, with `--hub`, downloaded into that cache. A file that is
//! missing is an error naming it. A component too big for one file (diffusers writes
//! shards above 10 GB, as for an f32 SDXL UNet) is read through its
//! `*.safetensors.index.json`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
};

use super::{arch::Architecture, checkpoint, checkpoint::keys::Component};
use crate::render::RenderError;

/// The files one model loads.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The UNet's weights.
    pub unet: Weights,
    /// The VAE's weights.
    pub vae: Weights,
    /// Per text encoder: its weights and its tokenizer.
    pub text: Vec<(Weights, TokenizerFiles)>,
}

/// Where a text encoder's tokenizer comes from.
#[derive(Debug, Clone)]
pub enum TokenizerFiles {
    /// A directory with `tokenizer.json`, or `vocab.json` and `merges.txt`.
    Dir(PathBuf),
    /// CLIP's vocabulary compiled into renderq (single-file checkpoints ship none).
    Clip,
}

impl fmt::Display for TokenizerFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenizerFiles::Dir(dir) => write!(f, "{}", dir.display()),
            TokenizerFiles::Clip => write!(f, "CLIP's built-in vocabulary"),
        }
    }
}

/// One component's weights: a safetensors file, or the shards an index names.
#[derive(Debug, Clone)]
pub struct Weights {
    /// The files, every tensor in exactly one.
    pub files: Vec<PathBuf>,
    /// The `*.safetensors.index.json` that named them, when sharded.
    pub index: Option<PathBuf>,
    /// In a single-file checkpoint: which of its models, renamed how. `None`: the
    /// files hold this component alone, under diffusers' names.
    pub part: Option<Component>,
}

impl Weights {
    /// One file.
    pub fn single(path: PathBuf) -> Self {
        Weights {
            files: vec![path],
            index: None,
            part: None,
        }
    }

    /// One model of a single-file checkpoint.
    pub fn part(path: PathBuf, component: Component) -> Self {
        Weights {
            part: Some(component),
            ..Weights::single(path)
        }
    }
}

impl fmt::Display for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(part), [file]) = (&self.part, self.files.as_slice()) {
            let what = match part {
                Component::Unet { .. } => "UNet",
                Component::Vae { .. } => "VAE",
                Component::Clip { .. } | Component::OpenClip { .. } => "text encoder",
            };
            return write!(f, "{} ({what})", file.display());
        }
        match (&self.index, self.files.as_slice()) {
            (Some(index), files) => write!(f, "{} ({} shards)", index.display(), files.len()),
            (None, [one]) => write!(f, "{}", one.display()),
            (None, files) => write!(f, "{files:?}"),
        }
    }
}

/// Where to look.
#[derive(Debug, Clone)]
pub enum WeightSource {
    /// A directory in the diffusers layout, or a Hugging Face cache entry of one.
    Local(PathBuf),
    /// A single-file checkpoint in the original Stability layout.
    Checkpoint(PathBuf),
    /// The hub (the weights land in the Hugging Face cache); needs a network.
    Hub,
}

/// The weight file names a diffusers component may have, preferred first.
const UNET_VAE: [&str; 2] = [
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
];
const TEXT: [&str; 2] = ["model.safetensors", "model.fp16.safetensors"];

/// A snapshot directory when `dir` is a Hugging Face cache entry, else `dir`.
pub fn snapshot(dir: &Path) -> PathBuf {
    let snapshots = dir.join("snapshots");
    if !snapshots.is_dir() {
        return dir.to_path_buf();
    }
    if let Ok(rev) = std::fs::read_to_string(dir.join("refs").join("main")) {
        let chosen = snapshots.join(rev.trim());
        if chosen.is_dir() {
            return chosen;
        }
    }
    std::fs::read_dir(&snapshots)
        .ok()
        .and_then(|mut entries| entries.find_map(|e| e.ok().map(|e| e.path())))
        .unwrap_or(snapshots)
}

fn missing_text(model: &str, path: &Path) -> String {
    format!(
        "model `{model}`: missing weight file {} (expected the diffusers layout: unet/, vae/, \
         text_encoder/, tokenizer/ with tokenizer.json or vocab.json and merges.txt)",
        path.display()
    )
}

fn missing(model: &str, path: &Path) -> RenderError {
    RenderError::Abort(missing_text(model, path))
}

/// The first of `names` present in `dir`, as one file or as the shards of its index.
fn first_existing(model: &str, dir: &Path, names: &[&str]) -> Result<Weights, RenderError> {
    for name in names {
        let single = dir.join(name);
        if single.is_file() {
            return Ok(Weights::single(single));
        }
        let index = dir.join(format!("{name}.index.json"));
        if index.is_file() {
            return shards(model, dir, index);
        }
    }
    Err(missing(model, &dir.join(names[0])))
}

/// The shards a `*.safetensors.index.json` maps tensors to, each a file beside it.
fn shards(model: &str, dir: &Path, index: PathBuf) -> Result<Weights, RenderError> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let bad = |why: String| {
        RenderError::Abort(format!(
            "model `{model}`: {} is not a safetensors index: {why}",
            index.display()
        ))
    };
    let text = std::fs::read_to_string(&index).map_err(|e| bad(e.to_string()))?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let names: BTreeSet<&String> = parsed.weight_map.values().collect();
    if names.is_empty() {
        return Err(bad("its weight_map is empty".into()));
    }
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        // A shard is a file beside its index, never a path elsewhere.
        if name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(bad(format!("shard `{name}` is not a file name")));
        }
        let file = dir.join(name);
        if !file.is_file() {
            return Err(missing(model, &file));
        }
        files.push(file);
    }
    Ok(Weights {
        files,
        index: Some(index),
        part: None,
    })
}

/// The files of `model` under `dir`.
pub fn local(model: &str, arch: &Architecture, dir: &Path) -> Result<ModelFiles, RenderError> {
    let root = snapshot(dir);
    let mut text = Vec::new();
    for enc in &arch.text {
        let weights = first_existing(model, &root.join(enc.dir), &TEXT)?;
        // tokenizer.json, or vocab.json and merges.txt as diffusers repositories ship.
        let tokenizer = root.join(enc.tokenizer_dir);
        let has = |f: &str| tokenizer.join(f).is_file();
        let found = has("tokenizer.json") || (has("vocab.json") && has("merges.txt"));
        if !found {
            return Err(RenderError::Abort(format!(
                "{} (or vocab.json and merges.txt beside it)",
                missing_text(model, &tokenizer.join("tokenizer.json"))
            )));
        }
        text.push((weights, TokenizerFiles::Dir(tokenizer)));
    }
    Ok(ModelFiles {
        unet: first_existing(model, &root.join("unet"), &UNET_VAE)?,
        vae: first_existing(model, &root.join("vae"), &UNET_VAE)?,
        text,
    })
}

/// The parts of the single-file checkpoint of `model` at `path`.
pub fn checkpoint(model: &str, path: &Path) -> Result<ModelFiles, RenderError> {
    let found =
        checkpoint::read(path).map_err(|e| RenderError::Abort(format!("model `{model}`: {e}")))?;
    let part = |c: Component| Weights::part(path.to_path_buf(), c);
    Ok(ModelFiles {
        unet: part(found.unet),
        vae: part(found.vae),
        text: found
            .text
            .into_iter()
            .map(|c| (part(c), TokenizerFiles::Clip))
            .collect(),
    })
}

/// Downloads (or finds in the cache) the files of `model` from the hub.
pub async fn hub(model: &str, arch: &Architecture) -> Result<ModelFiles, RenderError> {
    let api =
        hf_hub::api::tokio::Api::new().map_err(|e| RenderError::Abort(format!("hub: {e}")))?;
    let fetch = |repo: &str, file: String| {
        let repo = api.model(repo.to_string());
        let model = model.to_string();
        async move {
            repo.get(&file).await.map_err(|e| {
                // Network trouble is worth another try; the job retries with backoff.
                RenderError::Retry(format!("model `{model}`: downloading {file}: {e}"))
            })
        }
    };
    let mut text = Vec::new();
    for enc in &arch.text {
        let weights = fetch(arch.repo, format!("{}/{}", enc.dir, TEXT[0])).await?;
        let tokenizer = fetch(enc.tokenizer_repo, "tokenizer.json".into()).await?;
        let dir = tokenizer
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        text.push((Weights::single(weights), TokenizerFiles::Dir(dir)));
    }
    Ok(ModelFiles {
        unet: Weights::single(fetch(arch.repo, format!("unet/{}", UNET_VAE[0])).await?),
        vae: Weights::single(fetch(arch.repo, format!("vae/{}", UNET_VAE[0])).await?),
        text,
    })
}
