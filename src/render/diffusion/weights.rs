//! Where a model's files are: a local directory in the diffusers layout (`unet/`,
//! `vae/`, `text_encoder/`, `tokenizer/`), a Hugging Face cache (`models--org--name/
//! snapshots/<rev>/…`), or, with `--hub`, downloaded into that cache. A file that is
//! missing is an error naming it.

use std::path::{Path, PathBuf};

use super::arch::Architecture;
use crate::render::RenderError;

/// The files one model loads.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The UNet's weights.
    pub unet: PathBuf,
    /// The VAE's weights.
    pub vae: PathBuf,
    /// Per text encoder: (weights, tokenizer.json).
    pub text: Vec<(PathBuf, PathBuf)>,
}

/// Where to look.
#[derive(Debug, Clone)]
pub enum WeightSource {
    /// A directory in the diffusers layout, or a Hugging Face cache entry of one.
    Local(PathBuf),
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
fn snapshot(dir: &Path) -> PathBuf {
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
         text_encoder/, tokenizer/tokenizer.json)",
        path.display()
    )
}

fn missing(model: &str, path: &Path) -> RenderError {
    RenderError::Abort(missing_text(model, path))
}

fn first_existing(model: &str, dir: &Path, names: &[&str]) -> Result<PathBuf, RenderError> {
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| missing(model, &dir.join(names[0])))
}

/// The files of `model` under `dir`.
pub fn local(model: &str, arch: &Architecture, dir: &Path) -> Result<ModelFiles, RenderError> {
    let root = snapshot(dir);
    let mut text = Vec::new();
    for enc in &arch.text {
        let weights = first_existing(model, &root.join(enc.dir), &TEXT)?;
        let tokenizer = root.join(enc.tokenizer_dir).join("tokenizer.json");
        if !tokenizer.is_file() {
            // A diffusers download has only vocab.json and merges.txt there.
            let hint = match enc.tokenizer_repo {
                "" => String::new(),
                repo => format!("; diffusers repositories ship none: take {repo}'s tokenizer.json"),
            };
            return Err(RenderError::Abort(missing_text(model, &tokenizer) + &hint));
        }
        text.push((weights, tokenizer));
    }
    Ok(ModelFiles {
        unet: first_existing(model, &root.join("unet"), &UNET_VAE)?,
        vae: first_existing(model, &root.join("vae"), &UNET_VAE)?,
        text,
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
        text.push((weights, tokenizer));
    }
    Ok(ModelFiles {
        unet: fetch(arch.repo, format!("unet/{}", UNET_VAE[0])).await?,
        vae: fetch(arch.repo, format!("vae/{}", UNET_VAE[0])).await?,
        text,
    })
}
