//! Single-file checkpoints in the original Stability layout, as ComfyUI and
//! AUTOMATIC1111 users hold them: the tiny model written both ways renders the same
//! image bit for bit, its architecture is read from the file's shapes, what weights
//! cannot say comes from a sidecar, and what renderq cannot serve is refused naming
//! why.

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use candle_core::{DType, Device, Tensor};
use common::{diffusion_request, pngs_under, render_all, run_diffusion};
use renderq::render::{
    RenderRequest,
    diffusion::{
        DiffusionRenderer, WeightSource, checkpoint,
        sampling::{Prediction, Spacing},
        tiny, tokenizer,
    },
};

/// The tiny model as a diffusers directory `tiny-dir/` and as the checkpoint
/// `tiny-file.safetensors` beside it, the same weights in both.
struct Twins {
    models: tempfile::TempDir,
}

impl Twins {
    fn new() -> Self {
        let models = tempfile::tempdir().unwrap();
        let arch = tiny::checkpoint_architecture();
        let dir = models.path().join("tiny-dir");
        tiny::write(&dir, &arch).unwrap();
        tiny::write_checkpoint(&dir, &arch, &models.path().join("tiny-file.safetensors")).unwrap();
        Twins { models }
    }

    fn dir(&self) -> PathBuf {
        self.models.path().join("tiny-dir")
    }

    fn file(&self) -> PathBuf {
        self.models.path().join("tiny-file.safetensors")
    }
}

fn request(prompt: &str, seed: u64) -> RenderRequest {
    diffusion_request("tiny", prompt, "blurry", seed)
}

#[test]
fn a_checkpoint_reads_as_the_architecture_it_was_written_from() {
    let twins = Twins::new();
    let read = checkpoint::read(&twins.file()).unwrap();
    let built = tiny::checkpoint_architecture();
    let debug = |x: &dyn std::fmt::Debug| format!("{x:?}");
    assert_eq!(debug(&read.arch.unet), debug(&built.unet));
    assert_eq!(debug(&read.arch.vae), debug(&built.vae));
    assert_eq!(debug(&read.arch.text[0].arch), debug(&built.text[0].arch));
    assert_eq!(debug(&read.arch.schedule), debug(&built.schedule));
    assert_eq!(read.arch.vae_scale, 0.18215);
    assert_eq!(
        (read.arch.default_steps, read.arch.default_guidance),
        (30, 7.5)
    );
}

#[tokio::test]
async fn a_checkpoint_renders_what_its_diffusers_twin_renders_bit_for_bit() {
    let twins = Twins::new();
    let arch = tiny::checkpoint_architecture();
    let from_dir = DiffusionRenderer::new(
        "tiny",
        arch,
        WeightSource::Local(twins.dir()),
        Device::Cpu,
        DType::F32,
    );
    let from_file = DiffusionRenderer::new(
        "tiny",
        checkpoint::read(&twins.file()).unwrap().arch,
        WeightSource::Checkpoint(twins.file()),
        Device::Cpu,
        DType::F32,
    );
    let batch = [
        request("studio photo of a teal armchair", 7),
        request("a brass lamp, on the chair!", 8),
    ];
    let a = render_all(&from_dir, &batch).await;
    let b = render_all(&from_file, &batch).await;
    assert_eq!(a.len(), 2);
    assert!(
        a[0] == b[0] && a[1] == b[1],
        "the same weights, the same bytes"
    );
    assert_ne!(a[0], a[1], "two jobs, two images");
}

/// The compiled-in vocabulary numbers tokens as OpenAI's CLIP tokenizer does
/// (`tests/data/clip-tokenizer/openai.py` wrote its ids for each prompt).
#[test]
fn the_built_in_clip_vocabulary_gives_openai_s_ids() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/clip-tokenizer");
    let prompts: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(data.join("prompts.json")).unwrap()).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("openai-ids.json")).unwrap())
            .unwrap();
    let clip = tokenizer::clip().unwrap();
    assert_eq!(clip.get_vocab_size(true) as u64, expected["vocab_size"]);
    let mut compared = 0;
    for (prompt, ids) in prompts.iter().zip(expected["ids"].as_array().unwrap()) {
        let want: Vec<u32> = serde_json::from_value(ids.clone()).unwrap();
        let got = tokenizer::prompt_ids(&clip, prompt, 77, 49407).unwrap();
        let got: Vec<u32> = got[..want.len()].to_vec();
        assert_eq!(got, want, "{prompt:?}");
        compared += 1;
    }
    assert_eq!(compared, prompts.len());
}

fn sidecar(twins: &Twins, json: serde_json::Value) -> Result<checkpoint::Checkpoint, String> {
    std::fs::write(twins.file().with_extension("json"), json.to_string()).unwrap();
    checkpoint::read(&twins.file())
}

#[test]
fn what_the_weights_cannot_say_comes_from_the_sidecar() {
    let twins = Twins::new();
    let turbo = sidecar(
        &twins,
        serde_json::json!({"prediction_type": "v_prediction", "timestep_spacing": "trailing"}),
    )
    .unwrap();
    assert_eq!(turbo.arch.schedule.prediction, Prediction::V);
    assert_eq!(turbo.arch.schedule.spacing, Spacing::Trailing);
    assert_eq!(
        (turbo.arch.default_steps, turbo.arch.default_guidance),
        (1, 0.0)
    );
    let tuned = sidecar(
        &twins,
        serde_json::json!({"default_steps": 8, "default_guidance": 3.5}),
    )
    .unwrap();
    assert_eq!(
        (tuned.arch.default_steps, tuned.arch.default_guidance),
        (8, 3.5)
    );
    assert_eq!(tuned.arch.schedule.prediction, Prediction::Epsilon);
    for (json, field) in [
        (serde_json::json!({"prediction": "v"}), "prediction"),
        (
            serde_json::json!({"prediction_type": "sample"}),
            "prediction_type",
        ),
        (serde_json::json!({"default_steps": 0}), "default_steps"),
    ] {
        let err = sidecar(&twins, json).unwrap_err();
        assert!(
            err.contains("tiny-file.json") && err.contains(&format!("`{field}`")),
            "{err}"
        );
    }
}

/// Rewrites the checkpoint with `change` applied to its tensors.
fn rewrite(file: &Path, change: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let mut tensors = candle_core::safetensors::load(file, &Device::Cpu).unwrap();
    change(&mut tensors);
    candle_core::safetensors::save(&tensors, file).unwrap();
}

#[test]
fn a_v_pred_marker_in_the_file_means_v_prediction() {
    let twins = Twins::new();
    rewrite(&twins.file(), |t| {
        t.insert(
            "v_pred".into(),
            Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let read = checkpoint::read(&twins.file()).unwrap();
    assert_eq!(read.arch.schedule.prediction, Prediction::V);
}

#[test]
fn files_renderq_cannot_serve_are_refused_saying_why() {
    let twins = Twins::new();
    let vae_alone = twins.dir().join("vae/diffusion_pytorch_model.safetensors");
    let err = checkpoint::read(&vae_alone).unwrap_err();
    assert!(err.contains("not a Stable Diffusion checkpoint"), "{err}");

    let garbage = twins.models.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a tensor file at all").unwrap();
    let err = checkpoint::read(&garbage).unwrap_err();
    assert!(
        err.contains("garbage.safetensors") && err.contains("not a safetensors file"),
        "{err}"
    );

    rewrite(&twins.file(), |t| {
        let conv_in = "model.diffusion_model.input_blocks.0.0.weight";
        let c = t[conv_in].dim(0).unwrap();
        t.insert(
            conv_in.into(),
            Tensor::zeros((c, 9, 3, 3), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = checkpoint::read(&twins.file()).unwrap_err();
    assert!(
        err.contains("9 input channels") && err.contains("inpainting"),
        "{err}"
    );

    let twins = Twins::new();
    rewrite(&twins.file(), |t| {
        t.retain(|k, _| !k.starts_with("cond_stage_model."));
    });
    let err = checkpoint::read(&twins.file()).unwrap_err();
    assert!(err.contains("no text encoder"), "{err}");
}

/// `renderq run` serves a directory and a checkpoint from one `--models-dir`, each by
/// its name; the same job on both gives the same image.
#[test]
fn renderq_run_serves_a_directory_and_a_checkpoint_side_by_side() {
    let twins = Twins::new();
    let work = tempfile::tempdir().unwrap();
    let jobs = work.path().join("jobs.jsonl");
    let job = |model: &str| {
        format!(
            r#"{{"prompt":"a teal armchair","model":"{model}","width":32,"height":32,"steps":2,"seed":11}}"#
        )
    };
    std::fs::write(&jobs, [job("tiny-dir"), job("tiny-file")].join("\n")).unwrap();
    let (code, text) = run_diffusion(
        work.path(),
        &jobs,
        twins.models.path(),
        "tiny-dir,tiny-file",
    );
    assert_eq!(code, Some(0), "{text}");
    let images = pngs_under(&work.path().join("out"));
    assert_eq!(images.len(), 2, "{text}");
    assert_eq!(images[0], images[1], "the same weights, the same image");

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_renderq"))
        .args([
            "worker",
            "--diffusion",
            "tiny-file.safetensors",
            "--models-dir",
        ])
        .arg(twins.models.path())
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", work.path().join("rq2.db").display()),
        )
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(err.contains("--diffusion tiny-file"), "{err}");
}
