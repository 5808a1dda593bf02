//! A `VarBuilder` backend over a checkpoint: candle's models ask for diffusers names
//! and get the checkpoint's tensors, renamed, split or transposed on the way.

use std::sync::Arc;

use candle_core::{DType, Device, Error, Result, Shape, Tensor};
use candle_nn::{Init, var_builder::SimpleBackend};

use super::keys::{Component, Source};
use crate::render::diffusion::tensors::{FileTensors, shaped};

/// One component of a checkpoint file (whose tensors its components share).
pub struct Backend {
    file: Arc<FileTensors>,
    component: Component,
}

impl Backend {
    /// `component` of `file`.
    pub fn new(file: Arc<FileTensors>, component: Component) -> Self {
        Backend { file, component }
    }

    fn source(&self, name: &str) -> Result<Source> {
        self.component
            .source(name)
            .ok_or_else(|| Error::CannotFindTensor { path: name.into() })
    }

    fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        match self.source(name)? {
            Source::Tensor(key) => self.file.load(&key, device),
            Source::Slice {
                name: key,
                part,
                parts,
            } => {
                let whole = self.file.load(&key, device)?;
                let rows = whole.dim(0)?;
                if rows % parts != 0 {
                    return Err(Error::Msg(format!(
                        "{key} has {rows} rows, not {parts} equal parts"
                    )));
                }
                whole
                    .narrow(0, part * rows / parts, rows / parts)?
                    .contiguous()
            }
            Source::Transposed(key) => self.file.load(&key, device)?.t()?.contiguous(),
        }
    }
}

impl SimpleBackend for Backend {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        shaped(self.load(name, dev)?, s, name)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.load(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match self.component.source(name) {
            Some(
                Source::Tensor(key) | Source::Transposed(key) | Source::Slice { name: key, .. },
            ) => self.file.contains(&key),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_nn::{VarBuilder, VarMap};
    use candle_transformers::models::clip::text_model::{
        Activation, ClipTextConfig, ClipTextTransformer,
    };

    use super::*;

    /// A small CLIP text encoder under diffusers' names, and a text projection.
    fn encoder() -> HashMap<String, Tensor> {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let config = ClipTextConfig {
            vocab_size: 50,
            embed_dim: 24,
            activation: Activation::QuickGelu,
            intermediate_size: 48,
            max_position_embeddings: 8,
            pad_with: None,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            projection_dim: 16,
        };
        ClipTextTransformer::new(vb.pp("text_model"), &config).unwrap();
        let mut tensors: HashMap<String, Tensor> = map
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let projection = Tensor::randn(0f32, 1., (16, 24), &Device::Cpu).unwrap();
        tensors.insert("text_projection.weight".into(), projection);
        tensors
    }

    /// `tensors` as OpenCLIP keeps them: q, k and v joined, the projection transposed.
    fn as_open_clip(
        tensors: &HashMap<String, Tensor>,
        keys: &Component,
    ) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        let mut joined: HashMap<String, Vec<Option<Tensor>>> = HashMap::new();
        for (name, t) in tensors {
            match keys
                .source(name)
                .unwrap_or_else(|| panic!("{name} has no place"))
            {
                Source::Tensor(k) => {
                    out.insert(k, t.clone());
                }
                Source::Transposed(k) => {
                    out.insert(k, t.t().unwrap().contiguous().unwrap());
                }
                Source::Slice { name, part, parts } => {
                    joined.entry(name).or_insert_with(|| vec![None; parts])[part] = Some(t.clone());
                }
            }
        }
        for (name, parts) in joined {
            let parts: Vec<Tensor> = parts.into_iter().map(|p| p.expect("every part")).collect();
            out.insert(name, Tensor::cat(&parts, 0).unwrap());
        }
        out
    }

    #[test]
    fn an_open_clip_encoder_gives_back_every_tensor_under_its_diffusers_name() {
        let tensors = encoder();
        let keys = Component::OpenClip {
            prefix: "conditioner.embedders.1.model.".into(),
        };
        let original = as_open_clip(&tensors, &keys);
        assert!(original.contains_key(
            "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight"
        ));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("checkpoint.safetensors");
        candle_core::safetensors::save(&original, &file).unwrap();
        let read = FileTensors::open(&[file]).unwrap();
        let backend = Backend::new(Arc::new(read), keys);
        for (name, want) in &tensors {
            assert!(backend.contains_tensor(name), "{name}");
            let got = backend
                .get(
                    want.shape().clone(),
                    name,
                    Init::Const(0.),
                    DType::F32,
                    &Device::Cpu,
                )
                .unwrap();
            let diff: f32 = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert_eq!(diff, 0.0, "{name}");
        }
        assert!(!backend.contains_tensor("text_model.encoder.layers.9.mlp.fc1.weight"));
    }

    #[test]
    fn a_one_by_one_convolution_serves_as_the_linear_layer_it_stands_for() {
        let conv = Tensor::arange(0f32, 16., &Device::Cpu)
            .unwrap()
            .reshape((4, 4, 1, 1))
            .unwrap();
        let original = HashMap::from([(
            "first_stage_model.decoder.mid.attn_1.q.weight".to_string(),
            conv,
        )]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vae.safetensors");
        candle_core::safetensors::save(&original, &file).unwrap();
        let tensors = FileTensors::open(&[file]).unwrap();
        let backend = Backend::new(Arc::new(tensors), Component::Vae { levels: 2 });
        let name = "decoder.mid_block.attentions.0.to_q.weight";
        let linear = backend
            .get(
                (4, 4).into(),
                name,
                Init::Const(0.),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        assert_eq!(linear.dims(), &[4, 4]);
        assert_eq!(linear.to_vec2::<f32>().unwrap()[1], vec![4., 5., 6., 7.]);
        let wrong = backend.get(
            (2, 8).into(),
            name,
            Init::Const(0.),
            DType::F32,
            &Device::Cpu,
        );
        assert!(wrong.is_err(), "another shape is not the same tensor");
    }
}
