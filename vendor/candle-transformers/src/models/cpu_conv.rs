//! 2-D convolution on the CPU as one matrix product per band of output rows, in the
//! model's own NCHW layout. For each input channel and kernel offset, the band's
//! column matrix holds the input row each output row reads, copied whole (stride 1)
//! or value by value; the product of the `[c_out, c_in·k·k]` weight with it is the
//! band's output, already in NCHW order. candle 0.11's CPU convolution gathers its
//! columns one value at a time into a transposed tile and scatters its results back
//! the same way, which took longer than the matrix products themselves in a VAE
//! decode. Other devices, types and grouped convolutions keep candle's version.

use candle::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor};

pub mod upsample;
pub mod winograd;

/// Most values in one band's column matrix (32 MiB of f32): large layers are done in
/// bands of output rows so the matrix stays this small.
const BAND_VALUES: usize = 1 << 23;

/// Fewest column values worth a thread of their own: small layers are copied by fewer
/// threads than the machine has, rather than paying a thread start per few values.
const VALUES_PER_THREAD: usize = 1 << 16;

/// The column matrix `[c_in·k·k, rows·w_out]` of one image's band of output rows.
#[derive(Clone, Copy, Debug)]
struct Columns {
    image: usize,
    k: usize,
    padding: usize,
    stride: usize,
    dilation: usize,
    first_row: usize,
    rows: usize,
    w_out: usize,
}

impl CustomOp1 for Columns {
    fn name(&self) -> &'static str {
        "conv2d-columns"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(values) = s else {
            candle::bail!("conv2d columns: the input is not f32")
        };
        let Some((start, end)) = l.contiguous_offsets() else {
            candle::bail!("conv2d columns: the input is not contiguous")
        };
        let x = &values[start..end];
        let (_, c, h, w) = l.shape().dims4()?;
        let Columns { image, k, padding, stride, dilation, first_row, rows, w_out } = *self;
        let band = rows * w_out;
        let per_channel = k * k * band;
        let mut out = vec![0f32; c * per_channel];
        let image = &x[image * c * h * w..(image + 1) * c * h * w];
        let threads = candle::utils::get_num_threads()
            .min(out.len() / VALUES_PER_THREAD)
            .clamp(1, c.max(1));
        let channels_per_thread = c.div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            for (part, out) in out.chunks_mut(per_channel * channels_per_thread).enumerate() {
                scope.spawn(move || {
                    for (i, out) in out.chunks_mut(per_channel).enumerate() {
                        let channel = part * channels_per_thread + i;
                        let plane = &image[channel * h * w..(channel + 1) * h * w];
                        for (offset, out) in out.chunks_mut(band).enumerate() {
                            let (ky, kx) = (offset / k, offset % k);
                            for (r, out) in out.chunks_mut(w_out).enumerate() {
                                let y = (first_row + r) * stride + ky * dilation;
                                if y < padding || y - padding >= h {
                                    continue; // above or below the image: zeros
                                }
                                let row = &plane[(y - padding) * w..(y - padding + 1) * w];
                                copy_row(row, out, kx * dilation, padding, stride);
                            }
                        }
                    }
                });
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((c * k * k, band))))
    }
}

/// One output row's inputs at kernel column offset `shift`: `out[o]` is
/// `row[o·stride + shift − padding]`, zero where that falls outside the row.
fn copy_row(row: &[f32], out: &mut [f32], shift: usize, padding: usize, stride: usize) {
    let w = row.len();
    // The first output whose input is inside the row, and the last one plus one.
    let first = padding.saturating_sub(shift).div_ceil(stride);
    let end = if w + padding > shift {
        ((w + padding - shift - 1) / stride + 1).min(out.len())
    } else {
        0
    };
    if first >= end {
        return;
    }
    let from = first * stride + shift - padding;
    if stride == 1 {
        out[first..end].copy_from_slice(&row[from..from + (end - first)]);
    } else {
        for (o, v) in out[first..end].iter_mut().zip(row[from..].iter().step_by(stride)) {
            *o = *v;
        }
    }
}

/// Whether [`conv2d`] serves this convolution.
pub fn serves(x: &Tensor, weight: &Tensor, groups: usize) -> bool {
    let square = matches!(weight.dims(), [_, _, kh, kw] if kh == kw);
    x.device().is_cpu()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && groups == 1
        && x.rank() == 4
        && square
        && x.is_contiguous()
}

/// `x` `[b, c_in, h, w]` convolved with `weight` `[c_out, c_in, k, k]`, plus `bias`.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (_, _, k, _) = weight.dims4()?;
    // The 3×3 layers that keep their size, most of a VAE decode's work, need fewer
    // multiplications by Winograd's method.
    if k == 3 && padding == 1 && stride == 1 && dilation == 1 && winograd::pays(h, w) {
        return winograd::conv3x3(x, weight, bias);
    }
    by_columns(x, weight, bias, padding, stride, dilation)
}

/// [`conv2d`] by column matrices alone, whatever the layer.
pub fn by_columns(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (c_out, c_in, k, _) = weight.dims4()?;
    if c != c_in {
        candle::bail!("conv2d: {c} input channels for a kernel of {c_in}")
    }
    let reach = dilation * k.saturating_sub(1) + 1;
    if k == 0 || stride == 0 || h + 2 * padding < reach || w + 2 * padding < reach {
        candle::bail!("conv2d: a {k}×{k} kernel does not fit a {h}×{w} input")
    }
    let h_out = (h + 2 * padding - reach) / stride + 1;
    let w_out = (w + 2 * padding - reach) / stride + 1;
    let kernel = weight.reshape((c_out, c_in * k * k))?;
    // A plain 1×1 convolution reads each image as it is: its columns are its planes.
    if k == 1 && padding == 0 && stride == 1 {
        let images = (0..b)
            .map(|image| kernel.matmul(&x.get(image)?.reshape((c, h * w))?))
            .collect::<Result<Vec<_>>>()?;
        return with_bias(Tensor::stack(&images, 0)?.reshape((b, c_out, h, w))?, bias);
    }
    let band_rows = (BAND_VALUES / (c_in * k * k * w_out).max(1)).clamp(1, h_out);
    let mut images = Vec::with_capacity(b);
    for image in 0..b {
        let mut bands = Vec::new();
        for first_row in (0..h_out).step_by(band_rows) {
            let rows = band_rows.min(h_out - first_row);
            let columns = Columns {
                image,
                k,
                padding,
                stride,
                dilation,
                first_row,
                rows,
                w_out,
            };
            bands.push(kernel.matmul(&x.apply_op1_no_bwd(&columns)?)?);
        }
        images.push(Tensor::cat(&bands, 1)?);
    }
    with_bias(Tensor::stack(&images, 0)?.reshape((b, c_out, h_out, w_out))?, bias)
}

fn with_bias(out: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(bias) => out.broadcast_add(&bias.reshape((1, bias.elem_count(), 1, 1))?),
        None => Ok(out),
    }
}

/// Runs `f` on a contiguous f32 CPU tensor's values, in place.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) => Ok(f(&v[start..end])),
        _ => candle::bail!("cpu conv: not a contiguous f32 CPU tensor"),
    }
}

/// Runs `work(index, part)` for consecutive `per_item`-sized parts of `out`, spread
/// over at most `threads` threads.
fn split<F>(out: &mut [f32], per_item: usize, threads: usize, work: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let items = out.len() / per_item.max(1);
    let per_thread = items.div_ceil(threads.clamp(1, items.max(1))).max(1);
    let work = &work;
    std::thread::scope(|scope| {
        for (part, chunk) in out.chunks_mut(per_thread * per_item).enumerate() {
            scope.spawn(move || {
                for (i, item) in chunk.chunks_mut(per_item).enumerate() {
                    work(part * per_thread + i, item);
                }
            });
        }
    });
}
