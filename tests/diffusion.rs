//! The diffusion renderer on a tiny Stable Diffusion with random weights, written by
//! the tests in the diffusers layout and loaded by the code that loads real weights.

mod common;

use std::{path::Path, sync::Arc, time::Duration};

use candle_core::{DType, Device};
use common::*;
use image::RgbImage;
use renderq::{
    job::Sampler,
    render::{
        RenderError, RenderRequest, Renderer, Renderers,
        diffusion::{
            Architecture, DiffusionRenderer, Pipeline, Sample, Settings, WeightSource,
            arch::TextArch, config, tiny, weights,
        },
    },
};

fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    tiny::write(dir.path(), &tiny::architecture(1)).unwrap();
    dir
}

/// The device the tests render on: `RENDERQ_TEST_DEVICE` (`cpu` unless set;
/// `scripts/gpu-check.sh` sets `cuda:0`), always in f32 so a batch and its jobs
/// rendered alone agree to rounding.
fn device() -> Device {
    let spec = std::env::var("RENDERQ_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    renderq::render::diffusion::device(&spec).expect("RENDERQ_TEST_DEVICE")
}

fn renderer(dir: &Path) -> DiffusionRenderer {
    DiffusionRenderer::new(
        "sd-turbo",
        tiny::architecture(1),
        WeightSource::Local(dir.to_path_buf()),
        device(),
        DType::F32,
    )
}

fn request(prompt: &str, negative: &str, seed: u64) -> RenderRequest {
    diffusion_request("sd-turbo", prompt, negative, seed)
}

async fn render(r: &DiffusionRenderer, batch: &[RenderRequest]) -> Vec<RgbImage> {
    render_all(r, batch).await
}

fn abort_message(result: &Result<RgbImage, RenderError>) -> String {
    match result {
        Err(RenderError::Abort(m)) => m.clone(),
        other => panic!("expected an Abort error, got {other:?}"),
    }
}

/// Largest difference of one channel of one pixel.
fn max_diff(a: &RgbImage, b: &RgbImage) -> u8 {
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap()
}

#[tokio::test]
async fn a_mixed_batch_gives_the_images_of_its_jobs_rendered_alone() {
    let dir = model_dir();
    let r = renderer(dir.path());
    let batch = [
        request("a teal armchair", "", 1),
        request("a brass lamp", "blurry", 2),
        request("a linen sofa", "dark", 3),
    ];
    let together = render(&r, &batch).await;
    assert_eq!(together.len(), 3);
    for (job, image) in batch.iter().zip(&together) {
        assert_eq!(image.dimensions(), (32, 24));
        let alone = render(&r, std::slice::from_ref(job)).await;
        // One forward pass for three jobs sums in a different order than three
        // passes: allow one step of rounding, no more.
        assert!(
            max_diff(image, &alone[0]) <= 1,
            "job `{}` differs by {} when rendered alone",
            job.prompt,
            max_diff(image, &alone[0])
        );
    }
    assert!(
        max_diff(&together[0], &together[1]) > 8 && max_diff(&together[1], &together[2]) > 8,
        "each job got its own prompt and seed"
    );
}

/// Every scheduler renders each job from its seed alone: the same image in a batch as
/// alone, again on a second run; and the schedulers differ from one another.
#[tokio::test]
async fn every_scheduler_renders_a_job_from_its_seed_alone() {
    let dir = model_dir();
    let r = renderer(dir.path());
    let mut firsts = Vec::new();
    for sampler in Sampler::ALL {
        let job = |prompt: &str, seed| RenderRequest {
            sampler,
            steps: Some(4),
            ..request(prompt, "", seed)
        };
        let batch = [job("a teal armchair", 1), job("a brass lamp", 2)];
        let together = render(&r, &batch).await;
        let again = render(&r, &batch).await;
        for (i, image) in together.iter().enumerate() {
            let alone = render(&r, std::slice::from_ref(&batch[i])).await;
            let off = max_diff(image, &alone[0]);
            assert!(off <= 1, "{sampler:?}: job {i} differs by {off} alone");
            assert_eq!(
                image, &again[i],
                "{sampler:?}: job {i} differs on a second run"
            );
        }
        // Another seed, another image: the seed reaches the noise of every step.
        let reseeded = render(&r, &[job("a teal armchair", 99)]).await;
        assert!(max_diff(&together[0], &reseeded[0]) > 8, "{sampler:?}");
        firsts.push((sampler, together.into_iter().next().unwrap()));
    }
    for (i, (a, image)) in firsts.iter().enumerate() {
        for (b, other) in &firsts[i + 1..] {
            // DDIM with η = 0 is Euler's method in other coordinates: the two take the
            // same path and part only at the last step (DDIM stops at timestep 0's
            // noise, Euler at none), a rounding step or two on this model.
            if (*a, *b) == (Sampler::Ddim, Sampler::Euler) {
                continue;
            }
            assert!(
                max_diff(image, other) > 2,
                "{a:?} and {b:?} drew the same image"
            );
        }
    }
}

#[test]
fn a_text_that_recurs_in_a_batch_is_encoded_once() {
    let dir = model_dir();
    let arch = tiny::architecture(1);
    let files = weights::local("tiny", &arch, dir.path()).unwrap();
    let pipeline = Pipeline::load(arch, &files, device(), DType::F32).unwrap();
    let sample = |prompt: &str, seed| Sample {
        prompt: prompt.into(),
        negative_prompt: String::new(),
        seed,
    };
    let batch = [
        sample("a teal armchair", 1),
        sample("a teal armchair", 2),
        sample("a brass lamp", 3),
    ];
    let settings = Settings {
        width: 32,
        height: 24,
        steps: 3,
        guidance: 5.0,
        sampler: Sampler::Ddim,
    };
    let (together, timings) = pipeline.render(&batch, &settings).unwrap();
    // Two prompts and one (empty) negative prompt, not six encoder runs.
    assert_eq!(timings.texts_encoded, 3);
    for (sample, image) in batch.iter().zip(&together) {
        let (alone, t) = pipeline
            .render(std::slice::from_ref(sample), &settings)
            .unwrap();
        assert_eq!(t.texts_encoded, 2);
        assert!(max_diff(image, &alone[0]) <= 1, "seed {}", sample.seed);
    }
    assert!(
        max_diff(&together[0], &together[1]) > 8,
        "one prompt, two seeds: two images"
    );
}

/// Each device call's stage times reach the process's metrics, by model and stage.
#[tokio::test]
async fn stage_times_are_histograms_by_model_and_stage() {
    let dir = model_dir();
    let count = |stage: &str| {
        let text = renderq::telemetry::metrics().render();
        let series = format!(
            "renderq_diffusion_stage_seconds_count{{model=\"sd-turbo\",stage=\"{stage}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0.0, |v| v.parse::<f64>().unwrap())
    };
    let before: Vec<f64> = ["text", "unet", "decode"].map(count).to_vec();
    render(&renderer(dir.path()), &[request("x", "", 1)]).await;
    let after: Vec<f64> = ["text", "unet", "decode"].map(count).to_vec();
    for (b, a) in before.iter().zip(&after) {
        assert!(
            a > b,
            "one more observation of every stage: {before:?} -> {after:?}"
        );
    }
}

#[tokio::test]
async fn the_same_seed_gives_the_same_bytes_and_another_seed_another_image() {
    let dir = model_dir();
    let job = request("a teal armchair", "blurry", 42);
    let first = render(&renderer(dir.path()), std::slice::from_ref(&job)).await;
    // A second renderer loads the files again: nothing carried over in memory.
    let again = render(&renderer(dir.path()), std::slice::from_ref(&job)).await;
    assert_eq!(first[0].as_raw(), again[0].as_raw());
    let other = render(
        &renderer(dir.path()),
        &[request("a teal armchair", "blurry", 43)],
    )
    .await;
    assert!(
        max_diff(&first[0], &other[0]) > 8,
        "the seed changes the image"
    );
    let prompt = render(
        &renderer(dir.path()),
        &[request("a brass lamp", "blurry", 42)],
    )
    .await;
    assert!(
        max_diff(&first[0], &prompt[0]) > 8,
        "the prompt changes the image"
    );
}

/// A stock diffusers download has vocab.json and merges.txt but no tokenizer.json:
/// the error names the missing file and the repository that has one.
#[test]
fn a_tokenizer_is_tokenizer_json_or_vocab_and_merges() {
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
    ] {
        let path = dir.path().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }
    let arch = Architecture::preset("sd-1.5").unwrap();
    let Err(RenderError::Abort(m)) = weights::local("sd-1.5", &arch, dir.path()) else {
        panic!("expected an Abort for a tokenizer with no merges");
    };
    assert!(
        m.contains("tokenizer/tokenizer.json") && m.contains("merges.txt"),
        "{m}"
    );
    // As diffusers repositories ship it: vocab.json and merges.txt.
    std::fs::write(dir.path().join("tokenizer/merges.txt"), b"").unwrap();
    let files = weights::local("sd-1.5", &arch, dir.path()).expect("vocab.json and merges.txt do");
    assert!(
        matches!(&files.text[0].1, weights::TokenizerFiles::Dir(d) if *d == dir.path().join("tokenizer"))
    );
}

/// CLIP's tokenizer built from vocab.json and merges.txt gives the ids transformers
/// gives (expected.json, made by tests/data/clip-tokenizer/make.py), and so does the
/// tokenizer.json transformers wrote from the same files: punctuation, Unicode,
/// whitespace and a prompt longer than the 77 tokens, cut before its end token.
#[test]
fn clip_tokenizer_from_vocab_and_merges_matches_transformers() {
    use renderq::render::diffusion::tokenizer;
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/clip-tokenizer");
    let built =
        tokenizer::clip_from_files(&data.join("vocab.json"), &data.join("merges.txt")).unwrap();
    let from_json = tokenizers::Tokenizer::from_file(data.join("tokenizer.json")).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("expected.json")).unwrap())
            .unwrap();
    let pad = built.token_to_id("<|endoftext|>").unwrap();
    let prompts = expected["prompts"].as_array().unwrap();
    assert!(prompts.len() >= 8);
    let mut cut = false;
    for (prompt, want) in prompts.iter().zip(expected["ids"].as_array().unwrap()) {
        let prompt = prompt.as_str().unwrap();
        let mut want: Vec<u32> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        cut |= want.len() == 77;
        want.resize(77, pad);
        let ours = tokenizer::prompt_ids(&built, prompt, 77, pad).unwrap();
        assert_eq!(
            ours, want,
            "built from vocab.json and merges.txt: {prompt:?}"
        );
        let json = tokenizer::prompt_ids(&from_json, prompt, 77, pad).unwrap();
        assert_eq!(json, want, "transformers' tokenizer.json: {prompt:?}");
    }
    assert!(cut, "one prompt is longer than the encoder takes");
}

#[tokio::test]
async fn missing_and_corrupt_files_are_named() {
    let dir = model_dir();
    std::fs::remove_file(dir.path().join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let out = renderer(dir.path()).render(&[request("x", "", 1)]).await;
    let m = abort_message(&out[0]);
    assert!(
        m.contains("missing weight file") && m.contains("unet/diffusion_pytorch_model.safetensors"),
        "{m}"
    );

    let dir = model_dir();
    let vae = dir.path().join("vae/diffusion_pytorch_model.safetensors");
    std::fs::write(&vae, b"this is not a safetensors file").unwrap();
    let out = renderer(dir.path()).render(&[request("x", "", 1)]).await;
    let m = abort_message(&out[0]);
    assert!(
        m.contains(&vae.display().to_string()) && m.contains("not a valid safetensors"),
        "{m}"
    );

    let dir = model_dir();
    std::fs::remove_file(dir.path().join("tokenizer/tokenizer.json")).unwrap();
    let out = renderer(dir.path()).render(&[request("x", "", 1)]).await;
    let m = abort_message(&out[0]);
    assert!(m.contains("tokenizer/tokenizer.json"), "{m}");

    // Weights of another shape: the file is named, not a tensor deep inside.
    let dir = model_dir();
    let other = tempfile::tempdir().unwrap();
    tiny::write(other.path(), &tiny::architecture(2)).unwrap();
    let unet = dir.path().join("unet/diffusion_pytorch_model.safetensors");
    std::fs::copy(
        other
            .path()
            .join("unet/diffusion_pytorch_model.safetensors"),
        &unet,
    )
    .unwrap();
    let out = renderer(dir.path()).render(&[request("x", "", 1)]).await;
    let m = abort_message(&out[0]);
    assert!(
        m.contains(&unet.display().to_string()) && m.contains("does not fit"),
        "{m}"
    );
}

/// An error inside a device call names the model, the shape of the call and the
/// stage it happened in, not only candle's words.
#[tokio::test]
async fn an_error_inside_the_device_call_names_the_model_and_the_stage() {
    // A text encoder from another model: every part loads (each matches its own
    // weights), and the UNet fails inside its first step when it meets embeddings
    // 64 wide where it attends over 32.
    let dir = model_dir();
    let mut arch = tiny::architecture(1);
    let mut other = tiny::architecture(1);
    if let TextArch::Clip(c) = &mut other.text[0].arch {
        (c.embed_dim, c.projection_dim, c.intermediate_size) = (64, 64, 128);
    }
    let donor = tempfile::tempdir().unwrap();
    tiny::write(donor.path(), &other).unwrap();
    std::fs::copy(
        donor.path().join("text_encoder/model.safetensors"),
        dir.path().join("text_encoder/model.safetensors"),
    )
    .unwrap();
    arch.text = other.text;
    let r = DiffusionRenderer::new(
        "sd-turbo",
        arch,
        WeightSource::Local(dir.path().to_path_buf()),
        device(),
        DType::F32,
    );
    let out = r.render(&[request("x", "", 1)]).await;
    let m = abort_message(&out[0]);
    assert!(
        m.contains("model `sd-turbo`, 32x24, 3 ddim steps, batch of 1"),
        "{m}"
    );
    assert!(m.contains("UNet, ddim step 1 of 3"), "{m}");
    assert!(m.contains("UNet, ddim step 1 of 3"), "{m}");
}

#[tokio::test]
async fn sizes_off_the_latent_grid_are_refused() {
    let dir = model_dir();
    let mut job = request("x", "", 1);
    job.width = 30;
    let out = renderer(dir.path()).render(&[job]).await;
    let m = abort_message(&out[0]);
    assert!(m.contains("multiples of 4") && m.contains("30x24"), "{m}");
}

#[tokio::test]
async fn a_hugging_face_cache_entry_loads() {
    let cache = tempfile::tempdir().unwrap();
    let entry = cache.path().join("models--stabilityai--sd-turbo");
    let snapshot = entry.join("snapshots/0a1b2c");
    tiny::write(&snapshot, &tiny::architecture(1)).unwrap();
    std::fs::create_dir_all(entry.join("refs")).unwrap();
    std::fs::write(entry.join("refs/main"), "0a1b2c").unwrap();
    let out = render(&renderer(&entry), &[request("x", "", 1)]).await;
    assert_eq!(out[0].dimensions(), (32, 24));
}

/// A copy of the model in `from`: the same random weights in another directory.
fn copy_of(from: &Path) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy(&path, &target);
            } else {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(from, dir.path());
    dir
}

/// Rewrites the safetensors file `path` with `rename` applied to every key.
fn rewrite_keys(path: &Path, rename: impl Fn(&str) -> String) {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let renamed: std::collections::HashMap<String, candle_core::Tensor> =
        tensors.into_iter().map(|(k, t)| (rename(&k), t)).collect();
    candle_core::safetensors::save(&renamed, path).unwrap();
}

#[tokio::test]
async fn a_text_encoder_without_the_text_model_prefix_renders_the_same() {
    let reference = model_dir();
    let unprefixed = copy_of(reference.path());
    let encoder = unprefixed.path().join("text_encoder/model.safetensors");
    rewrite_keys(&encoder, |k| {
        k.strip_prefix("text_model.").unwrap().to_string()
    });
    let job = [request("a teal armchair", "", 5)];
    let a = render(&renderer(reference.path()), &job).await;
    let b = render(&renderer(unprefixed.path()), &job).await;
    assert!(a[0] == b[0], "the same weights under either key layout");
}

/// Splits `dir/<name>` into two shards beside an index, as diffusers writes them.
fn shard(dir: &Path, name: &str) {
    let path = dir.join(name);
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    let stem = name.trim_end_matches(".safetensors");
    let mut weight_map = serde_json::Map::new();
    for (i, half) in keys.chunks(keys.len().div_ceil(2)).enumerate() {
        let file = format!("{stem}-{:05}-of-00002.safetensors", i + 1);
        let part: std::collections::HashMap<&String, candle_core::Tensor> =
            half.iter().map(|k| (*k, tensors[*k].clone())).collect();
        candle_core::safetensors::save(&part, dir.join(&file)).unwrap();
        for k in half {
            weight_map.insert(k.to_string(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join(format!("{name}.index.json")), index.to_string()).unwrap();
    std::fs::remove_file(path).unwrap();
}

#[tokio::test]
async fn sharded_weights_render_the_same_and_a_bad_index_is_named() {
    let reference = model_dir();
    let sharded = copy_of(reference.path());
    shard(
        &sharded.path().join("unet"),
        "diffusion_pytorch_model.safetensors",
    );
    shard(&sharded.path().join("text_encoder"), "model.safetensors");
    let job = [request("a brass floor lamp", "", 9)];
    let a = render(&renderer(reference.path()), &job).await;
    let b = render(&renderer(sharded.path()), &job).await;
    assert!(a[0] == b[0], "shards load the same tensors");

    // An index naming a shard outside its directory, or a missing shard, is refused.
    let index = sharded
        .path()
        .join("unet/diffusion_pytorch_model.safetensors.index.json");
    let good = std::fs::read_to_string(&index).unwrap();
    let escaping = good.replacen("diffusion_pytorch_model-00001", "../escape-00001", 1);
    std::fs::write(&index, escaping).unwrap();
    let m = abort_message(&renderer(sharded.path()).render(&job).await[0]);
    assert!(
        m.contains("not a file name") && m.contains("index.json"),
        "{m}"
    );
    std::fs::write(&index, &good).unwrap();
    let second = sharded
        .path()
        .join("unet/diffusion_pytorch_model-00002-of-00002.safetensors");
    std::fs::remove_file(&second).unwrap();
    let m = abort_message(&renderer(sharded.path()).render(&job).await[0]);
    assert!(m.contains(&second.display().to_string()), "{m}");
}

/// Through the worker: jobs of different sizes and formats, grouped by shape,
/// rendered, encoded and stored.
#[tokio::test]
async fn diffusion_jobs_go_through_the_worker() {
    let env = Env::with(Kind::Sqlite).await;
    let dir = model_dir();
    env.submit(&[
        r#"{"prompt":"a teal armchair","model":"sd-turbo","width":32,"height":24,"steps":2,"seed":1}"#,
        r#"{"prompt":"a brass lamp","model":"sd-turbo","width":32,"height":24,"steps":2,"format":"jpeg"}"#,
        r#"{"prompt":"a linen sofa","model":"sd-turbo","width":16,"height":16,"steps":2,"format":"webp"}"#,
    ])
    .await;
    let out = tempfile::tempdir().unwrap();
    let mut renderers = Renderers::builtin(0);
    renderers.insert("sd-turbo", Arc::new(renderer(dir.path())));
    let rows = env
        .work_until_done(3, renderers, out.path(), Duration::from_secs(120))
        .await;
    for row in &rows {
        assert_eq!(row.state.as_str(), "succeeded", "{:?}", row.error);
        let key = row.output_key.as_deref().unwrap();
        let bytes = std::fs::read(out.path().join(key)).unwrap();
        let format = image::guess_format(&bytes).unwrap();
        let image = image::load_from_memory(&bytes).unwrap();
        match key.rsplit('.').next().unwrap() {
            "png" => assert_eq!(
                (format, image.width(), image.height()),
                (image::ImageFormat::Png, 32, 24)
            ),
            "jpg" => assert_eq!(
                (format, image.width(), image.height()),
                (image::ImageFormat::Jpeg, 32, 24)
            ),
            "webp" => assert_eq!(
                (format, image.width(), image.height()),
                (image::ImageFormat::WebP, 16, 16)
            ),
            other => panic!("unexpected extension {other}"),
        }
    }
}

/// A panic inside the device call (candle, a native library) is not turned into a
/// failure of the whole batch: it reaches the worker, which renders the batch one job
/// at a time, so only the job that causes it fails.
#[tokio::test]
async fn a_panic_in_the_device_call_fails_only_its_job() {
    let dir = model_dir();
    let poisoned =
        || renderer(dir.path()).panicking_on(renderq::render::PanicOn::new(Some("POISON".into())));
    let direct = Arc::new(poisoned());
    let batch = vec![request("a teal armchair", "", 1), request("POISON", "", 2)];
    let call = tokio::spawn(async move { direct.render(&batch).await }).await;
    assert!(
        call.as_ref().is_err_and(|e| e.is_panic()),
        "the panic reaches the caller: {:?}",
        call.map(|r| r.len())
    );

    // A lease longer than the panic and its backtrace take on a loaded machine: a
    // lapsed one would hand the jobs over and bump their attempt.
    let env = Env::with_lease(Kind::Sqlite, Duration::from_secs(5)).await;
    env.submit(&[
        r#"{"prompt":"a teal armchair","model":"sd-turbo","width":32,"height":24,"steps":2}"#,
        r#"{"prompt":"POISON lamp","model":"sd-turbo","width":32,"height":24,"steps":2}"#,
        r#"{"prompt":"a linen sofa","model":"sd-turbo","width":32,"height":24,"steps":2}"#,
    ])
    .await;
    let out = tempfile::tempdir().unwrap();
    let mut renderers = Renderers::builtin(0);
    renderers.insert("sd-turbo", Arc::new(poisoned()));
    env.work_until_done(3, renderers, out.path(), Duration::from_secs(120))
        .await;
    let rows = env.record.jobs_of_queue(&env.queue).await.unwrap();
    for r in &rows {
        if r.prompt.contains("POISON") {
            assert_eq!(r.state, renderq::job::JobState::Failed, "{rows:?}");
            assert!(r.error.as_deref().unwrap().contains("renderer panicked"));
        } else {
            assert_eq!(
                (r.state, r.attempt),
                (renderq::job::JobState::Succeeded, 1),
                "{rows:?}"
            );
        }
    }
}

/// The binary: `--diffusion` names what it serves; without weights the job fails with
/// the file it looked for; an unknown model or device is refused at start.
#[tokio::test]
async fn the_binary_reports_missing_weights_and_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let job = r#"{"prompt":"x","model":"sd-turbo","width":64,"height":64}"#;
        exit_and_text(run_one_job(dir.path(), job).args(extra).output().unwrap())
    };
    let models = dir.path().join("models");
    let (code, output) = run(&[
        "--diffusion",
        "sd-turbo",
        "--models-dir",
        models.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{output}");
    let expected = models.join("sd-turbo/text_encoder/model.safetensors");
    assert!(output.contains(&expected.display().to_string()), "{output}");
    let (code, output) = run(&["--diffusion", "sd-9"]);
    assert_eq!(code, Some(2), "{output}");
    assert!(
        output.contains("unknown model `sd-9`") && output.contains("sdxl-turbo"),
        "{output}"
    );
    let (code, output) = run(&["--diffusion", "sd-turbo", "--device", "cpu,cpu"]);
    assert_eq!(code, Some(2), "{output}");
    assert!(
        output.contains("--device cpu,cpu: device Cpu is named twice"),
        "{output}"
    );
    // Sliced attention is served: the flag passes, and the start fails only on the
    // weights this machine lacks.
    let (code, output) = run(&[
        "--diffusion",
        "sd-turbo",
        "--attention-slice",
        "2",
        "--models-dir",
        models.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{output}");
    assert!(
        !output.contains("attention-slice") && output.contains(&expected.display().to_string()),
        "{output}"
    );
    if !cfg!(feature = "cuda") {
        let (code, output) = run(&["--diffusion", "sd-turbo", "--device", "cuda:0"]);
        assert_eq!(code, Some(2), "{output}");
        assert!(output.contains("--features cuda"), "{output}");
    }
}

fn model_configs(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/model-configs")
        .join(name)
}

/// The configs today's diffusers and transformers write for the five hub models
/// (`scripts/model-configs.py`) read as the presets of those names.
#[test]
fn the_published_configs_of_the_presets_read_as_the_presets() {
    for name in renderq::render::diffusion::PRESETS {
        let read = config::read(&model_configs(name), name).unwrap();
        let preset = Architecture::preset(name).unwrap();
        let same = |what: &str, a: String, b: String| assert_eq!(a, b, "{name}: {what}");
        same(
            "unet",
            format!("{:?}", read.unet),
            format!("{:?}", preset.unet),
        );
        same(
            "vae",
            format!("{:?}", read.vae),
            format!("{:?}", preset.vae),
        );
        same(
            "schedule",
            format!("{:?}", read.schedule),
            format!("{:?}", preset.schedule),
        );
        let encoders = |a: &Architecture| {
            a.text
                .iter()
                .map(|t| format!("{:?} {} {}", t.arch, t.dir, t.tokenizer_dir))
                .collect::<Vec<_>>()
        };
        assert_eq!(encoders(&read), encoders(&preset), "{name}: text encoders");
        assert_eq!(read.vae_scale, preset.vae_scale, "{name}");
        assert_eq!(
            (
                read.default_steps,
                read.default_guidance,
                read.size_multiple
            ),
            (
                preset.default_steps,
                preset.default_guidance,
                preset.size_multiple
            ),
            "{name}"
        );
    }
}

/// A model saved with its configs loads from them under any name, and renders what
/// the same architecture built by hand renders, bit for bit.
#[tokio::test]
async fn a_model_described_by_its_configs_loads_under_any_name() {
    let dir = model_dir();
    let read = config::read(dir.path(), "my-fine-tune").unwrap();
    let built = tiny::architecture(1);
    assert_eq!(format!("{:?}", read.unet), format!("{:?}", built.unet));
    assert_eq!(format!("{:?}", read.vae), format!("{:?}", built.vae));
    assert_eq!(
        format!("{:?}", read.schedule),
        format!("{:?}", built.schedule)
    );
    // Not a preset: the defaults of a model with leading timesteps.
    assert_eq!((read.default_steps, read.default_guidance), (30, 7.5));
    let from_configs = DiffusionRenderer::new(
        "my-fine-tune",
        read,
        WeightSource::Local(dir.path().to_path_buf()),
        device(),
        DType::F32,
    );
    let job = RenderRequest {
        model: "my-fine-tune".into(),
        ..request("a teal armchair", "", 5)
    };
    let a = render(&from_configs, std::slice::from_ref(&job)).await;
    let b = render(&renderer(dir.path()), &[job]).await;
    assert_eq!(a[0], b[0]);
}

/// A config renderq cannot serve is refused at start, naming the file and the field.
#[test]
fn a_config_renderq_cannot_serve_is_refused_naming_the_file_and_field() {
    let cases: [(&str, &str, serde_json::Value, &str); 9] = [
        (
            "model_index.json",
            "_class_name",
            "StableDiffusion3Pipeline".into(),
            "StableDiffusionPipeline",
        ),
        ("unet/config.json", "in_channels", 9.into(), "inpainting"),
        (
            "unet/config.json",
            "down_block_types",
            serde_json::json!([
                "SimpleCrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D"
            ]),
            "SimpleCrossAttnDownBlock2D",
        ),
        (
            "unet/config.json",
            "cross_attention_dim",
            768.into(),
            "1024",
        ),
        (
            "unet/config.json",
            "time_cond_proj_dim",
            256.into(),
            "LCM-LoRA",
        ),
        (
            "unet/config.json",
            "attention_head_dim",
            serde_json::json!([5, 10]),
            "one per block",
        ),
        ("vae/config.json", "latent_channels", 16.into(), "16"),
        (
            "text_encoder/config.json",
            "hidden_act",
            "relu".into(),
            "quick_gelu",
        ),
        (
            "scheduler/scheduler_config.json",
            "prediction_type",
            "sample".into(),
            "v_prediction",
        ),
    ];
    for (file, field, value, hint) in cases {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&model_configs("sd-turbo"), dir.path());
        let path = dir.path().join(file);
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        json[field] = value;
        std::fs::write(&path, json.to_string()).unwrap();
        let e = config::read(dir.path(), "sd-turbo").unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.file.ends_with(file), "{e}");
        let text = e.to_string();
        assert!(text.contains(file) && text.contains(hint), "{text}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `renderq run --diffusion NAME` serves a model directory under `--models-dir` by
/// its configs: jobs naming it render real images through the whole pipeline; a job
/// naming a model the worker does not serve fails, alone, saying so.
#[test]
fn renderq_run_serves_a_model_directory_by_its_name() {
    let work = tempfile::tempdir().unwrap();
    let models = work.path().join("models");
    tiny::write(&models.join("tiny-sd"), &tiny::architecture(1)).unwrap();
    let file = work.path().join("jobs.jsonl");
    std::fs::write(
        &file,
        [
            r#"{"prompt":"a teal armchair","model":"tiny-sd","width":32,"height":32,"steps":2,"scheduler":"dpmpp_2m"}"#,
            r#"{"prompt":"a brass lamp","model":"tiny-sd","width":32,"height":32,"steps":2,"scheduler":"euler_a"}"#,
            r#"{"prompt":"a linen sofa","model":"other-model","width":32,"height":32}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let (code, text) = run_diffusion(work.path(), &file, &models, "tiny-sd");
    assert_eq!(code, Some(1), "one job failed: {text}");
    assert!(
        text.contains("other-model") && text.contains("not served"),
        "{text}"
    );
    let images = pngs_under(&work.path().join("out"));
    assert_eq!(images.len(), 2, "{text}");
    assert!(images.iter().all(|i| i.dimensions() == (32, 32)));
    assert!(max_diff(&images[0], &images[1]) > 8, "two jobs, two images");
}

/// A name that is neither a model directory with configs nor a preset is refused at
/// start, saying where it looked.
#[test]
fn a_worker_refuses_a_model_it_cannot_find_at_start() {
    let work = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_renderq"))
        .args(["worker", "--diffusion", "nowhere-model", "--models-dir"])
        .arg(work.path())
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", work.path().join("rq.db").display()),
        )
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("nowhere-model")
            && err.contains("model_index.json")
            && err.contains("sd-turbo"),
        "{err}"
    );
}

/// Sliced attention (`--attention-slice N`) renders what unsliced attention renders,
/// on head layouts like SD 1.5's (several heads, convolution projections) and SD
/// 2.x's (several heads, linear projections), with slices that divide batch × heads
/// and one that leaves a remainder. candle 0.11.1's own sliced attention failed here
/// with "unexpected rank, expected: 3, got: 4".
#[tokio::test]
async fn sliced_attention_renders_what_unsliced_attention_renders() {
    for linear in [false, true] {
        let mut arch = tiny::architecture(1);
        arch.unet.use_linear_projection = linear;
        for block in &mut arch.unet.blocks {
            block.attention_head_dim = 4;
        }
        let dir = tempfile::tempdir().unwrap();
        tiny::write(dir.path(), &arch).unwrap();
        let on = |arch: Architecture| {
            DiffusionRenderer::new(
                "sd-turbo",
                arch,
                WeightSource::Local(dir.path().to_path_buf()),
                device(),
                DType::F32,
            )
        };
        let batch = [
            request("a red shoe", "", 1),
            request("a blue hat", "blurry", 2),
        ];
        let whole = render(&on(arch.clone()), &batch).await;
        for slice in [1, 3] {
            let mut sliced = arch.clone();
            sliced.unet.sliced_attention_size = Some(slice);
            let images = render(&on(sliced), &batch).await;
            for (a, b) in whole.iter().zip(&images) {
                let diff = max_diff(a, b);
                assert!(
                    diff <= 1,
                    "linear projection {linear}, slice {slice}: differs by {diff}"
                );
            }
        }
    }
}

/// The largest absolute value of `t`.
fn largest_magnitude(t: &candle_core::Tensor) -> candle_core::Result<f32> {
    t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// `got` has `want`'s shape and differs from it by at most 1e-4 of its largest value,
/// which is not tiny (a result of zeros would match anything).
fn assert_close(
    got: &candle_core::Tensor,
    want: &candle_core::Tensor,
    case: &str,
) -> candle_core::Result<()> {
    assert_eq!(got.dims(), want.dims(), "{case}");
    let (diff, scale) = (largest_magnitude(&(got - want)?)?, largest_magnitude(want)?);
    assert!(
        scale > 0.1 && diff <= 1e-4 * scale,
        "{case}: differs by {diff} (of {scale})"
    );
    Ok(())
}

/// The convolution renderq's models run on the CPU (columns by band of output rows,
/// one matrix product each) gives candle-nn's result for every shape the models use:
/// 3×3 with padding, the strided downsample, 1×1, batches of two, no bias, and a
/// layer large enough to be done in several bands; and Winograd's method, which serves
/// the large 3×3 layers (odd sizes, several bands of tiles) and is checked on its own,
/// with 2×2 and with 4×4 output blocks, on every 3×3 case, down to a single pixel.
#[test]
fn the_cpu_convolution_matches_candle_nn() -> candle_core::Result<()> {
    use candle_core::{Module, Tensor};
    use candle_nn::Conv2dConfig;
    use candle_transformers::models::cpu_conv::{self, winograd::Block};
    let dev = Device::Cpu;
    let cases = [
        // (b, c_in, h, w, c_out, k, padding, stride, bias)
        (1, 4, 9, 7, 5, 3, 1, 1, true),
        // Down to a single pixel (Winograd's method is tried on every 3×3 case).
        (1, 2, 1, 1, 3, 3, 1, 1, true),
        (2, 3, 2, 5, 2, 3, 1, 1, false),
        (2, 3, 8, 8, 6, 3, 1, 2, true),
        (1, 6, 5, 5, 4, 1, 0, 1, false),
        (2, 5, 4, 6, 3, 1, 0, 1, true),
        (2, 2, 6, 4, 3, 3, 0, 1, true),
        (1, 3, 7, 6, 2, 3, 2, 3, true),
        (1, 40, 240, 240, 8, 3, 1, 1, true),
        (1, 40, 240, 240, 8, 3, 0, 1, true),
        // Winograd's: 16×16 tiles, then odd sizes with a batch of two, then a layer
        // wide enough to be done in two bands of tile rows by either tile size.
        (1, 5, 32, 32, 6, 3, 1, 1, true),
        (2, 3, 33, 35, 4, 3, 1, 1, false),
        (1, 64, 60, 512, 3, 3, 1, 1, true),
    ];
    for (b, c_in, h, w, c_out, k, padding, stride, bias) in cases {
        let x = Tensor::randn(0f32, 1., (b, c_in, h, w), &dev)?;
        let mut tensors = vec![(
            "c.weight".to_string(),
            Tensor::randn(0f32, 1., (c_out, c_in, k, k), &dev)?,
        )];
        if bias {
            tensors.push(("c.bias".to_string(), Tensor::randn(0f32, 1., c_out, &dev)?));
        }
        let vb =
            candle_nn::VarBuilder::from_tensors(tensors.into_iter().collect(), DType::F32, &dev);
        let cfg = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        let weight = vb.pp("c").get((c_out, c_in, k, k), "weight")?;
        let bias = bias.then(|| vb.pp("c").get(c_out, "bias")).transpose()?;
        let reference = candle_nn::Conv2d::new(weight.clone(), bias.clone(), cfg);
        let want = reference.forward(&x)?;
        // The models' convolutions (with_tracing's) are served by it on the CPU.
        assert!(cpu_conv::serves(&x, &weight, 1));
        let mut results = vec![(
            "",
            cpu_conv::conv2d(&x, &weight, bias.as_ref(), padding, stride, 1)?,
        )];
        if k == 3 && padding == 1 && stride == 1 {
            for (how, block) in [
                (" (Winograd 2×2)", Block::Two),
                (" (Winograd 4×4)", Block::Four),
            ] {
                let direct = cpu_conv::winograd::conv3x3_by(&x, &weight, bias.as_ref(), block)?;
                results.push((how, direct));
            }
        }
        for (how, got) in results {
            let case = format!(
                "{b}×{c_in}×{h}×{w} → {c_out}, {k}×{k}, padding {padding}, stride {stride}{how}"
            );
            assert_close(&got, &want, &case)?;
        }
    }
    Ok(())
}

/// A 2× nearest-neighbour upsample followed by a 3×3 convolution, as renderq's decoders
/// run it on the CPU (the kernel folded into four 2×2 phases, no upsampled image), gives
/// candle's upsample then candle-nn's convolution: single pixels, odd sizes, a batch of
/// two, no bias, and a layer done in several bands.
#[test]
fn the_fused_upsample_convolution_matches_upsampling_then_convolving() -> candle_core::Result<()> {
    use candle_core::{Module, Tensor};
    use candle_nn::Conv2dConfig;
    use candle_transformers::models::cpu_conv::upsample;
    let dev = Device::Cpu;
    // (b, c_in, h, w, c_out, bias)
    let cases = [
        (1, 3, 1, 1, 2, true),
        (1, 4, 5, 7, 6, true),
        (2, 3, 4, 3, 5, false),
        (1, 8, 16, 16, 8, true),
        (1, 64, 30, 260, 3, true),
    ];
    for (b, c_in, h, w, c_out, bias) in cases {
        let x = Tensor::randn(0f32, 1., (b, c_in, h, w), &dev)?;
        let weight = Tensor::randn(0f32, 1., (c_out, c_in, 3, 3), &dev)?;
        let bias = bias
            .then(|| Tensor::randn(0f32, 1., c_out, &dev))
            .transpose()?;
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let reference = candle_nn::Conv2d::new(weight.clone(), bias.clone(), cfg);
        let want = reference.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)?;
        let got = upsample::conv3x3(&x, &weight, bias.as_ref())?;
        let case = format!("{b}×{c_in}×{h}×{w} → {c_out}");
        assert_close(&got, &want, &case)?;
    }
    Ok(())
}

/// The group normalization renderq's models run on the CPU (one pass per group, SiLU
/// fused where the models apply it next) gives candle-nn's GroupNorm, and its SiLU,
/// on inputs far from zero mean, with uneven scales per channel, and on one value per
/// group.
#[test]
fn the_cpu_group_norm_matches_candle_nn() -> candle_core::Result<()> {
    use candle_core::{Module, Tensor};
    use candle_transformers::models::cpu_norm;
    let dev = Device::Cpu;
    // (b, channels, groups, h, w)
    for (b, c, groups, h, w) in [(1, 64, 32, 16, 16), (2, 12, 3, 5, 7), (1, 4, 4, 1, 1)] {
        let x = (Tensor::randn(0f32, 2., (b, c, h, w), &dev)? + 5.)?;
        let tensors = [
            ("weight".to_string(), Tensor::randn(0f32, 1., c, &dev)?),
            ("bias".to_string(), Tensor::randn(0f32, 1., c, &dev)?),
        ];
        let vb =
            candle_nn::VarBuilder::from_tensors(tensors.into_iter().collect(), DType::F32, &dev);
        let reference = candle_nn::group_norm(groups, c, 1e-6, vb.clone())?;
        let norm = cpu_norm::group_norm(groups, c, 1e-6, vb)?;
        let want = reference.forward(&x)?;
        let pairs = [
            ("group norm", norm.forward(&x)?, want.clone()),
            (
                "group norm and SiLU",
                norm.forward_silu(&x)?,
                candle_nn::ops::silu(&want)?,
            ),
        ];
        for (what, got, want) in pairs {
            let diff = largest_magnitude(&(got - &want)?)?;
            assert!(
                diff <= 1e-4,
                "{what} of {b}×{c}×{h}×{w} in {groups} groups: differs by {diff}"
            );
        }
    }
    Ok(())
}
