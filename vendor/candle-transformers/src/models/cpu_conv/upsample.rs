//! A nearest-neighbour 2× upsample followed by a 3×3 convolution (stride 1, padding 1),
//! as Stable Diffusion's decoders enlarge their images, without making the enlarged
//! image. Each output pixel of the pair reads a 3×3 window of the upsampled image, which
//! covers only 2×2 pixels of the original; which 2×2 depends on the pixel's position in
//! its 2×2 block (its phase), and the 3×3 kernel folds into one 2×2 kernel per phase.
//! So the pair is one 2×2 convolution of the original image with the four phases'
//! kernels stacked, `[4·k, c, 2, 2]`, whose outputs are then interleaved: 16
//! multiplications per block of four outputs and input channel instead of 36, no
//! upsampled copy, and one plain matrix product per band.

use super::{split, with_values};
use candle::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// Whether the fused pair pays for a `h`×`w` input: as for Winograd's method, the
/// per-call kernel folding must be small next to the convolution.
pub fn pays(h: usize, w: usize) -> bool {
    super::winograd::pays(2 * h, 2 * w)
}

/// `x` `[b, c, h, w]` upsampled 2× by nearest neighbour, then convolved with a 3×3
/// `weight` `[k, c, 3, 3]` at stride 1 and padding 1, plus `bias`: `[b, k, 2h, 2w]`,
/// as `conv2d(upsample_nearest2d(x))` gives it up to rounding.
pub fn conv3x3(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let (k, c_in, kh, kw) = weight.dims4()?;
    if c != c_in || kh != 3 || kw != 3 {
        candle::bail!(
            "upsample conv3x3: input {:?}, kernel {:?}",
            x.dims(),
            weight.dims()
        )
    }
    if h == 0 || w == 0 {
        candle::bail!("upsample conv3x3: an empty {h}×{w} input")
    }
    let folded = with_values(&weight.contiguous()?, |g| fold(g, k, c))?;
    let folded = Tensor::from_vec(folded, (4 * k, c, 2, 2), x.device())?;
    let bias = match bias {
        Some(bias) => Some(Tensor::cat(&[bias, bias, bias, bias], 0)?),
        None => None,
    };
    // Output (i, j) of phase (a, b) reads input rows i−1+a, i+a and columns j−1+b, j+b:
    // with padding 1, the 2×2 convolution's output (i + a, j + b).
    let phases = super::by_columns(&x.contiguous()?, &folded, bias.as_ref(), 1, 1, 1)?;
    phases.apply_op1_no_bwd(&Interleave { k })
}

/// Which of the 3×3 kernel's rows (or columns) fold into each of the 2×2 kernel's,
/// for phase 0 and phase 1: phase 0 reads the upsampled rows 2i−1, 2i, 2i+1, which are
/// the input rows i−1, i, i; phase 1 reads 2i, 2i+1, 2i+2, the input rows i, i, i+1.
const TAPS: [[&[usize]; 2]; 2] = [[&[0], &[1, 2]], [&[0, 1], &[2]]];

/// The `[k, c, 3, 3]` kernel folded into the four phases' `[4·k, c, 2, 2]`, phase
/// `(a, b)` at outputs `(2a + b)·k..`.
fn fold(weight: &[f32], k: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0f32; 4 * k * c * 4];
    for (phase, out) in out.chunks_mut(k * c * 4).enumerate() {
        let (rows, columns) = (TAPS[phase / 2], TAPS[phase % 2]);
        for (g, out) in weight.chunks(9).zip(out.chunks_mut(4)) {
            for (t, v) in out.iter_mut().enumerate() {
                *v = rows[t / 2]
                    .iter()
                    .flat_map(|y| columns[t % 2].iter().map(move |x| g[y * 3 + x]))
                    .sum();
            }
        }
    }
    out
}

/// `[b, 4·k, h + 1, w + 1]`, the phases' 2×2 convolutions, into `[b, k, 2h, 2w]`:
/// output pixel `(2i + a, 2j + b)` is phase `(a, b)`'s value at `(i + a, j + b)`.
struct Interleave {
    k: usize,
}

impl CustomOp1 for Interleave {
    fn name(&self) -> &'static str {
        "upsample-interleave"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(values) = s else {
            candle::bail!("upsample interleave: the input is not f32")
        };
        let Some((start, end)) = l.contiguous_offsets() else {
            candle::bail!("upsample interleave: the input is not contiguous")
        };
        let phases = &values[start..end];
        let (b, four_k, h1, w1) = l.shape().dims4()?;
        let k = self.k;
        if four_k != 4 * k || h1 < 2 || w1 < 2 {
            candle::bail!("upsample interleave: {:?} is not four phases", l.shape())
        }
        let (h, w) = (h1 - 1, w1 - 1);
        let plane = h1 * w1;
        let mut out = vec![0f32; b * k * 4 * h * w];
        let threads = candle::utils::get_num_threads();
        split(&mut out, 4 * h * w, threads, |index, out| {
            let (image, channel) = (index / k, index % k);
            // Phase (a, b)'s plane for this image and channel.
            let phase = |a: usize, b: usize| {
                let first = (image * 4 * k + (2 * a + b) * k + channel) * plane;
                &phases[first..first + plane]
            };
            for (y, row) in out.chunks_mut(2 * w).enumerate() {
                let (i, a) = (y / 2, y % 2);
                let line = |b: usize| &phase(a, b)[(i + a) * w1 + b..][..w];
                for (pair, (left, right)) in row.chunks_mut(2).zip(line(0).iter().zip(line(1))) {
                    pair[0] = *left;
                    pair[1] = *right;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, k, 2 * h, 2 * w))))
    }
}
