//! 3×3 convolutions (stride 1, padding 1) by Winograd's minimal filtering F(2×2, 3×3):
//! each 2×2 block of outputs costs 16 multiplications per input channel instead of 36,
//! so the matrix products, which are most of a Stable Diffusion VAE decode on the CPU,
//! do 2.25× less work. The input is cut into overlapping 4×4 tiles; tiles and kernels
//! are transformed (`Bᵀ d B`, `G g Gᵀ`), multiplied as 16 independent matrix products
//! (one per position in the 4×4 tile, over the channels), and transformed back
//! (`Aᵀ m A`) straight into the output with the bias added, one band of tile rows at a
//! time so the transformed tiles stay small.

use super::{split, with_values};
use candle::{Result, Tensor};

/// Most values in one band's transformed tiles or products (16 MiB of f32).
const BAND_VALUES: usize = 1 << 22;

/// Fewest output tiles for which transforming the kernel on each call pays: below it
/// (the deepest UNet layers at small sizes) the plain convolution is faster.
pub const MIN_TILES: usize = 256;

/// Whether a `h`×`w` image is large enough for [`conv3x3`] to pay.
pub fn pays(h: usize, w: usize) -> bool {
    h.div_ceil(2) * w.div_ceil(2) >= MIN_TILES
}

/// `x` `[b, c, h, w]` convolved with a 3×3 `weight` `[k, c, 3, 3]` at stride 1 and
/// padding 1, plus `bias`: `[b, k, h, w]`, as the direct convolution gives it up to
/// rounding.
pub fn conv3x3(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (k, c_in, kh, kw) = weight.dims4()?;
    if c != c_in || kh != 3 || kw != 3 {
        candle::bail!("winograd conv3x3: input {:?}, kernel {:?}", x.dims(), weight.dims())
    }
    if h == 0 || w == 0 {
        candle::bail!("winograd conv3x3: an empty {h}×{w} input")
    }
    let threads = candle::utils::get_num_threads().max(1);
    let kernels = with_values(&weight.contiguous()?, |g| transform_kernels(g, k, c, threads))?;
    // `[k, 16, c]` seen as the 16 products' left sides, `[16, k, c]`.
    let u = Tensor::from_vec(kernels, (k, 16, c), x.device())?.transpose(0, 1)?;
    let bias = match bias {
        Some(bias) => with_values(&bias.contiguous()?, <[f32]>::to_vec)?,
        None => vec![0f32; k],
    };
    let x = x.contiguous()?;
    let (tiles_y, tiles_x) = (h.div_ceil(2), w.div_ceil(2));
    let band_rows = (BAND_VALUES / (16 * c.max(k) * tiles_x).max(1)).clamp(1, tiles_y);
    let mut out = vec![0f32; b * k * h * w];
    for (image, out) in out.chunks_mut(k * h * w).enumerate() {
        for first in (0..tiles_y).step_by(band_rows) {
            let band = Band { first, rows: band_rows.min(tiles_y - first), tiles_x, h, w };
            let tiles = with_values(&x, |input| {
                let planes = &input[image * c * h * w..(image + 1) * c * h * w];
                transform_tiles(planes, c, band, threads)
            })?;
            let v = Tensor::from_vec(tiles, (c, 16, band.len()), x.device())?.transpose(0, 1)?;
            let products = u.matmul(&v)?;
            with_values(&products, |p| untransform(p, out, &bias, band, threads))?;
        }
    }
    Tensor::from_vec(out, (b, k, h, w), x.device())
}

/// Rows `first..first + rows` of an image's `tiles_y × tiles_x` output tiles.
#[derive(Clone, Copy, Debug)]
struct Band {
    first: usize,
    rows: usize,
    tiles_x: usize,
    h: usize,
    w: usize,
}

impl Band {
    fn len(&self) -> usize {
        self.rows * self.tiles_x
    }
}

/// `G g Gᵀ` for every kernel, laid out `[k, 16, c]`.
fn transform_kernels(weight: &[f32], k: usize, c: usize, threads: usize) -> Vec<f32> {
    let mut out = vec![0f32; k * 16 * c];
    split(&mut out, 16 * c, threads, |o, out| {
        for i in 0..c {
            let g = &weight[(o * c + i) * 9..(o * c + i + 1) * 9];
            // G g: 4 rows of 3.
            let mut t = [[0f32; 3]; 4];
            for j in 0..3 {
                let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
                t[0][j] = g0;
                t[1][j] = 0.5 * (g0 + g1 + g2);
                t[2][j] = 0.5 * (g0 - g1 + g2);
                t[3][j] = g2;
            }
            // (G g) Gᵀ: 4 rows of 4.
            for (r, row) in t.iter().enumerate() {
                let [x0, x1, x2] = *row;
                let u = [x0, 0.5 * (x0 + x1 + x2), 0.5 * (x0 - x1 + x2), x2];
                for (s, value) in u.into_iter().enumerate() {
                    out[(r * 4 + s) * c + i] = value;
                }
            }
        }
    });
    out
}

/// `Bᵀ d B` for every input tile of the band, laid out `[c, 16, tiles]`. A tile row's
/// four input rows are combined whole first (`Bᵀ d`), then each combined row's tiles
/// (`· B`), so both passes run along rows.
fn transform_tiles(planes: &[f32], c: usize, band: Band, threads: usize) -> Vec<f32> {
    let Band { first, rows, tiles_x, h, w } = band;
    let n = band.len();
    let mut out = vec![0f32; c * 16 * n];
    split(&mut out, 16 * n, threads, |channel, out| {
        let plane = &planes[channel * h * w..(channel + 1) * h * w];
        // Input rows with one zero column on the left and enough on the right for
        // every tile: value x sits at x + 1.
        let width = 2 * tiles_x + 2;
        let mut d = vec![[0f32; 4]; width];
        for row in 0..rows {
            let ty = first + row;
            for (r, column) in (0..4).map(|r| (r, (2 * ty + r).checked_sub(1))) {
                let line = column.filter(|y| *y < h).map(|y| &plane[y * w..(y + 1) * w]);
                for (x, v) in d.iter_mut().enumerate() {
                    v[r] = match (line, x.checked_sub(1)) {
                        (Some(line), Some(x)) if x < w => line[x],
                        _ => 0.0,
                    };
                }
            }
            // Bᵀ d down each column.
            let combined: Vec<[f32; 4]> = d
                .iter()
                .map(|&[d0, d1, d2, d3]| [d0 - d2, d1 + d2, d2 - d1, d1 - d3])
                .collect();
            let base = row * tiles_x;
            for r in 0..4 {
                let [o0, o1, o2, o3] = [0, 1, 2, 3].map(|s| (r * 4 + s) * n + base);
                for tx in 0..tiles_x {
                    let x = 2 * tx;
                    let (x0, x1, x2, x3) = (
                        combined[x][r],
                        combined[x + 1][r],
                        combined[x + 2][r],
                        combined[x + 3][r],
                    );
                    out[o0 + tx] = x0 - x2;
                    out[o1 + tx] = x1 + x2;
                    out[o2 + tx] = x2 - x1;
                    out[o3 + tx] = x1 - x3;
                }
            }
        }
    });
    out
}

/// `Aᵀ m A` plus the bias for every output tile of the band, from the products laid
/// out `[16, k, tiles]`, into the image's output `[k, h, w]`.
fn untransform(products: &[f32], out: &mut [f32], bias: &[f32], band: Band, threads: usize) {
    let Band { first, rows, tiles_x, h, w } = band;
    let n = band.len();
    let k = bias.len();
    split(out, h * w, threads, |o, plane| {
        let mut line = vec![[0f32; 2]; tiles_x];
        for row in 0..rows {
            let base = row * tiles_x;
            // The products at position (i, j) of this row's tiles.
            let m = |i: usize, j: usize| &products[((i * 4 + j) * k + o) * n + base..][..tiles_x];
            for r in 0..2 {
                let y = 2 * (first + row) + r;
                if y >= h {
                    break;
                }
                // Aᵀ m: row r of the tile from its four rows, for each column j.
                let s: [Vec<f32>; 4] = std::array::from_fn(|j| {
                    let (m0, m1, m2, m3) = (m(0, j), m(1, j), m(2, j), m(3, j));
                    (0..tiles_x)
                        .map(|t| match r {
                            0 => m0[t] + m1[t] + m2[t],
                            _ => m1[t] - m2[t] - m3[t],
                        })
                        .collect()
                });
                // (Aᵀ m) A.
                for (t, pair) in line.iter_mut().enumerate() {
                    let (s0, s1, s2, s3) = (s[0][t], s[1][t], s[2][t], s[3][t]);
                    *pair = [s0 + s1 + s2 + bias[o], s1 - s2 - s3 + bias[o]];
                }
                let dest = &mut plane[y * w..(y + 1) * w];
                for (v, x) in dest.iter_mut().zip(line.iter().flatten()) {
                    *v = *x;
                }
            }
        }
    });
}
