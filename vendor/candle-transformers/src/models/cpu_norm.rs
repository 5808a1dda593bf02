//! Group normalization, and group normalization followed by SiLU, in one pass over
//! each group on the CPU. candle-nn's GroupNorm is seven tensor operations, five of
//! them making a new tensor the size of the input, and the SiLU after it an eighth:
//! in a VAE decode at 256×256 they took longer than a third of the convolutions'
//! time, most of it in the kernel handing out fresh pages. Here the statistics are
//! one read of the group and the result one write into a single new tensor. Other
//! devices and types keep candle-nn's.

use candle::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Storage, Tensor};
use candle_nn::VarBuilder;

/// A GroupNorm layer that can also apply SiLU to its output at no extra cost.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    inner: candle_nn::GroupNorm,
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

/// The layer whose `weight` and `bias` are under `vb`, as `candle_nn::group_norm`.
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
    let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
    let inner = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
    Ok(GroupNorm { inner, weight, bias, groups, eps })
}

impl GroupNorm {
    /// The normalized `x`, then SiLU: `y · sigmoid(y)`.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        match self.fused(x, true)? {
            Some(y) => Ok(y),
            None => candle_nn::ops::silu(&self.inner.forward(x)?),
        }
    }

    fn fused(&self, x: &Tensor, silu: bool) -> Result<Option<Tensor>> {
        let served = x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
            && self.bias.dtype() == DType::F32
            && x.rank() >= 3
            && x.dim(1)? % self.groups == 0
            && x.dim(1)? == self.weight.elem_count();
        if !served {
            return Ok(None);
        }
        let op = Fused {
            weight: values(&self.weight)?,
            bias: values(&self.bias)?,
            groups: self.groups,
            eps: self.eps as f32,
            silu,
        };
        Ok(Some(x.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.fused(x, false)? {
            Some(y) => Ok(y),
            None => self.inner.forward(x),
        }
    }
}

/// A small f32 CPU tensor's values.
fn values(t: &Tensor) -> Result<Vec<f32>> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) => Ok(v[start..end].to_vec()),
        _ => candle::bail!("group norm: not an f32 CPU tensor"),
    }
}

struct Fused {
    weight: Vec<f32>,
    bias: Vec<f32>,
    groups: usize,
    eps: f32,
    silu: bool,
}

impl CustomOp1 for Fused {
    fn name(&self) -> &'static str {
        "group-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(values) = s else {
            candle::bail!("group norm: the input is not f32")
        };
        let Some((start, end)) = l.contiguous_offsets() else {
            candle::bail!("group norm: the input is not contiguous")
        };
        let x = &values[start..end];
        let dims = l.shape().dims();
        let channels = dims[1];
        let plane: usize = dims[2..].iter().product();
        let per_group = channels / self.groups * plane;
        let mut out = vec![0f32; x.len()];
        let groups = x.len() / per_group.max(1);
        let threads = candle::utils::get_num_threads().clamp(1, groups.max(1));
        let per_thread = groups.div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            for (part, out) in out.chunks_mut(per_thread * per_group).enumerate() {
                scope.spawn(move || {
                    for (i, out) in out.chunks_mut(per_group).enumerate() {
                        let group = part * per_thread + i;
                        let input = &x[group * per_group..(group + 1) * per_group];
                        let first_channel = (group % self.groups) * (channels / self.groups);
                        self.normalize(input, out, first_channel, plane);
                    }
                });
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

impl Fused {
    /// One group: its mean and variance, then each channel's scale and shift.
    fn normalize(&self, input: &[f32], out: &mut [f32], first_channel: usize, plane: usize) {
        let (mean, variance) = moments(input);
        let inv = 1.0 / (variance + self.eps).sqrt();
        for (c, (input, out)) in input.chunks(plane).zip(out.chunks_mut(plane)).enumerate() {
            // Centred before scaling: with a tiny variance the scale is huge, and
            // `x · scale − mean · scale` would lose the difference.
            let scale = inv * self.weight[first_channel + c];
            let shift = self.bias[first_channel + c];
            if self.silu {
                for (y, x) in out.iter_mut().zip(input) {
                    let v = (x - mean) * scale + shift;
                    *y = v / (1.0 + (-v).exp());
                }
            } else {
                for (y, x) in out.iter_mut().zip(input) {
                    *y = (x - mean) * scale + shift;
                }
            }
        }
    }
}

/// Mean and (biased) variance, summed in f32 lanes a block at a time and the blocks
/// in f64, so a group of millions of values loses no precision.
fn moments(x: &[f32]) -> (f32, f32) {
    let (mut sum, mut squares) = (0f64, 0f64);
    for block in x.chunks(4096) {
        let (mut s, mut q) = ([0f32; 8], [0f32; 8]);
        let lanes = block.chunks_exact(8);
        let rest = lanes.remainder();
        for v in lanes {
            for i in 0..8 {
                s[i] += v[i];
                q[i] += v[i] * v[i];
            }
        }
        sum += s.iter().map(|v| *v as f64).sum::<f64>() + rest.iter().map(|v| *v as f64).sum::<f64>();
        squares += q.iter().map(|v| *v as f64).sum::<f64>()
            + rest.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>();
    }
    let n = x.len().max(1) as f64;
    let mean = sum / n;
    (mean as f32, (squares / n - mean * mean).max(0.0) as f32)
}
