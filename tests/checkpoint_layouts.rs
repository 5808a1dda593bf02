//! The single-file layouts of the published models at full size, without weights:
//! `tests/data/checkpoint-keys/<model>.tsv` lists every tensor of SD 1.5's, SD 2.1's
//! and SDXL's original checkpoints with its shape. The lists were written by
//! `write_checkpoint_layouts` below and checked with diffusers' own single-file
//! converter (`scripts/checkpoint-keys.py`: it turns each list into exactly the
//! diffusers models' tensors). Here, renderq must read each list as its preset and
//! find every tensor candle's models ask for.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder, var_builder::SimpleBackend};
use candle_transformers::models::{
    clip::text_model::ClipTextTransformer,
    stable_diffusion::{
        clip::ClipTextTransformer as SdClipTextTransformer, unet_2d::UNet2DConditionModel,
        vae::AutoEncoderKL,
    },
};
use renderq::render::diffusion::{
    Architecture,
    arch::TextArch,
    checkpoint::{
        self,
        keys::{Component, Source},
    },
};

type Shapes = BTreeMap<String, Vec<usize>>;

/// Records the names and shapes a model asks for, handing out views of one zero (a
/// full-size SDXL costs no memory).
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Shapes>>);

impl SimpleBackend for Recorder {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.0
            .lock()
            .unwrap()
            .insert(name.into(), s.dims().to_vec());
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        Err(candle_core::Error::CannotFindTensor { path: name.into() })
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// What each of `arch`'s parts asks for, by diffusers name.
fn requested(arch: &Architecture) -> Vec<Shapes> {
    let record = |build: &dyn Fn(VarBuilder<'static>) -> Result<()>| {
        let recorder = Recorder::default();
        let vb = VarBuilder::from_backend(Box::new(recorder.clone()), DType::F32, Device::Cpu);
        build(vb).unwrap();
        recorder.0.lock().unwrap().clone()
    };
    let mut parts = vec![
        record(&|vb| UNet2DConditionModel::new(vb, 4, 4, false, arch.unet.clone()).map(drop)),
        record(&|vb| AutoEncoderKL::new(vb, 3, 3, arch.vae.clone()).map(drop)),
    ];
    for enc in &arch.text {
        parts.push(record(&|vb| match &enc.arch {
            TextArch::Sd(c) => SdClipTextTransformer::new(vb, c).map(drop),
            TextArch::Clip(c) => ClipTextTransformer::new(vb.pp("text_model"), c).map(drop),
        }));
    }
    parts
}

/// The checkpoint layout of each preset: (preset, its text encoders' keys).
fn layouts() -> Vec<(&'static str, Vec<Component>)> {
    let clip = |prefix: &str| Component::Clip {
        prefix: prefix.into(),
        nested: true,
    };
    let open_clip = |prefix: &str| Component::OpenClip {
        prefix: prefix.into(),
    };
    vec![
        ("sd-1.5", vec![clip("cond_stage_model.transformer.")]),
        ("sd-2.1", vec![open_clip("cond_stage_model.model.")]),
        (
            "sdxl",
            vec![
                clip("conditioner.embedders.0.transformer."),
                open_clip("conditioner.embedders.1.model."),
            ],
        ),
    ]
}

fn fixture(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/checkpoint-keys")
        .join(format!("{model}.tsv"))
}

fn read_fixture(model: &str) -> Shapes {
    std::fs::read_to_string(fixture(model))
        .unwrap()
        .lines()
        .map(|line| {
            let (key, dims) = line.split_once('\t').unwrap();
            let dims = dims.split(',').filter(|d| !d.is_empty());
            (key.to_string(), dims.map(|d| d.parse().unwrap()).collect())
        })
        .collect()
}

/// A safetensors file with this header and no data: enough for renderq to read a
/// checkpoint's architecture, which never looks past the header.
fn header_only(shapes: &Shapes, path: &Path) {
    let header: serde_json::Map<String, serde_json::Value> = shapes
        .iter()
        .map(|(k, s)| {
            let info = serde_json::json!({"dtype": "F16", "shape": s, "data_offsets": [0, 0]});
            (k.clone(), info)
        })
        .collect();
    let text = serde_json::Value::Object(header).to_string();
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text.as_bytes());
    std::fs::write(path, bytes).unwrap();
}

/// Where `name` lies in the checkpoint, with the shape it has there.
fn original(component: &Component, name: &str, shape: &[usize]) -> (String, Vec<usize>) {
    match component
        .source(name)
        .unwrap_or_else(|| panic!("{name} has no place"))
    {
        Source::Tensor(key) => {
            // The original VAE's attention projections are 1x1 convolutions.
            let conv = key.contains(".attn_1.") && key.ends_with("weight") && shape.len() == 2;
            let shape = if conv {
                [shape, &[1, 1]].concat()
            } else {
                shape.to_vec()
            };
            (key, shape)
        }
        Source::Slice { name, parts, .. } => {
            let mut s = shape.to_vec();
            s[0] *= parts;
            (name, s)
        }
        Source::Transposed(key) => (key, shape.iter().rev().copied().collect()),
    }
}

/// Writes the fixtures: `RENDERQ_CHECKPOINT_KEYS=DIR cargo test --test
/// checkpoint_layouts -- --ignored`. Besides what candle asks for they hold what real
/// checkpoints also carry: SDXL's size conditioning (`label_emb`), OpenCLIP's text
/// projection and SD 2.x's last OpenCLIP layer, which diffusers drops.
#[test]
#[ignore = "writes the fixtures; run by hand"]
fn write_checkpoint_layouts() {
    let out = PathBuf::from(std::env::var("RENDERQ_CHECKPOINT_KEYS").unwrap());
    std::fs::create_dir_all(&out).unwrap();
    for (model, text) in layouts() {
        let arch = Architecture::preset(model).unwrap();
        let found = component_keys(&arch, text);
        let mut keys = Shapes::new();
        for (component, part) in found.iter().zip(requested(&arch)) {
            for (name, shape) in part {
                let (key, shape) = original(component, &name, &shape);
                keys.insert(key, shape);
            }
        }
        extras(model, &mut keys);
        let lines: Vec<String> = keys
            .iter()
            .map(|(k, s)| {
                let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
                format!("{k}\t{}", dims.join(","))
            })
            .collect();
        std::fs::write(out.join(format!("{model}.tsv")), lines.join("\n") + "\n").unwrap();
    }
}

fn component_keys(arch: &Architecture, text: Vec<Component>) -> Vec<Component> {
    let mut keys = vec![Component::unet_of(&arch.unet), Component::vae_of(&arch.vae)];
    keys.extend(text);
    keys
}

/// Tensors real checkpoints hold that candle's models do not ask for.
fn extras(model: &str, keys: &mut Shapes) {
    let before = keys.clone();
    let mut add = |k: String, s: &[usize]| {
        keys.insert(k, s.to_vec());
    };
    match model {
        "sd-2.1" => {
            let p = "cond_stage_model.model.";
            let last: Vec<(String, Vec<usize>)> = before
                .iter()
                .filter_map(|(k, s)| {
                    let rest = k.strip_prefix(&format!("{p}transformer.resblocks.22."))?;
                    Some((format!("{p}transformer.resblocks.23.{rest}"), s.clone()))
                })
                .collect();
            for (k, s) in last {
                add(k, &s);
            }
            add(format!("{p}text_projection"), &[1024, 1024]);
        }
        "sdxl" => {
            let u = "model.diffusion_model.label_emb.0.";
            add(format!("{u}0.weight"), &[1280, 2816]);
            add(format!("{u}0.bias"), &[1280]);
            add(format!("{u}2.weight"), &[1280, 1280]);
            add(format!("{u}2.bias"), &[1280]);
            add(
                "conditioner.embedders.1.model.text_projection".into(),
                &[1280, 1280],
            );
        }
        _ => {}
    }
}

/// Each published layout reads as its preset, and every tensor candle's models ask
/// for is in it, with the shape they ask for.
#[test]
fn the_published_checkpoint_layouts_read_as_their_presets() {
    let dir = tempfile::tempdir().unwrap();
    for (model, _) in layouts() {
        let shapes = read_fixture(model);
        let file = dir.path().join(format!("{model}.safetensors"));
        header_only(&shapes, &file);
        let read = checkpoint::read(&file).unwrap_or_else(|e| panic!("{model}: {e}"));
        let preset = Architecture::preset(model).unwrap();
        let debug = |x: &dyn std::fmt::Debug| format!("{x:?}");
        assert_eq!(debug(&read.arch.unet), debug(&preset.unet), "{model}");
        assert_eq!(debug(&read.arch.vae), debug(&preset.vae), "{model}");
        assert_eq!(read.arch.vae_scale, preset.vae_scale, "{model}");
        assert_eq!(read.arch.text.len(), preset.text.len(), "{model}");
        for (a, b) in read.arch.text.iter().zip(&preset.text) {
            assert_eq!(debug(&a.arch), debug(&b.arch), "{model}");
        }
        let components = [vec![read.unet, read.vae], read.text].concat();
        for (component, part) in components.iter().zip(requested(&preset)) {
            for (name, shape) in part {
                let (key, want) = original(component, &name, &shape);
                assert_eq!(shapes.get(&key), Some(&want), "{model}: {name} at {key}");
            }
        }
    }
}
