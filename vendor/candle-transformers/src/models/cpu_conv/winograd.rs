//! 3×3 convolutions (stride 1, padding 1) by Winograd's minimal filtering, F(2×2, 3×3)
//! and F(4×4, 3×3): each 2×2 block of outputs costs 16 multiplications per input channel
//! instead of 36, and each 4×4 block 36 instead of 144, so the matrix products, which
//! are most of a Stable Diffusion VAE decode on the CPU, do 2.25× or 4× less work. The
//! input is cut into overlapping tiles (4×4 or 6×6); tiles and kernels are transformed
//! (`Bᵀ d B`, `G g Gᵀ`), multiplied as one independent matrix product per position in
//! the tile (over the channels), and transformed back (`Aᵀ m A`) straight into the
//! output with the bias added, one band of tile rows at a time so the transformed tiles
//! stay small.

use super::{split, with_values};
use candle::{Result, Tensor};

/// Most values in one band's transformed tiles or products (16 MiB of f32).
const BAND_VALUES: usize = 1 << 22;

/// Fewest output tiles for which transforming the kernel on each call pays: below it
/// (the deepest UNet layers at small sizes) the plain convolution is faster. The same
/// holds for both tile sizes, counted in their own tiles.
pub const MIN_TILES: usize = 256;

/// The side of the output block each tile gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    /// F(2×2, 3×3): 4×4 tiles, the most accurate.
    Two,
    /// F(4×4, 3×3): 6×6 tiles, 1.8× fewer multiplications than [`Block::Two`].
    Four,
}

impl Block {
    fn tiles(self, h: usize, w: usize) -> usize {
        let side = match self {
            Block::Two => 2,
            Block::Four => 4,
        };
        h.div_ceil(side) * w.div_ceil(side)
    }

    /// The block that serves a `h`×`w` image best, if either pays.
    pub fn for_image(h: usize, w: usize) -> Option<Block> {
        [Block::Four, Block::Two].into_iter().find(|block| block.tiles(h, w) >= MIN_TILES)
    }
}

/// Whether a `h`×`w` image is large enough for [`conv3x3`] to pay.
pub fn pays(h: usize, w: usize) -> bool {
    Block::for_image(h, w).is_some()
}

/// `x` `[b, c, h, w]` convolved with a 3×3 `weight` `[k, c, 3, 3]` at stride 1 and
/// padding 1, plus `bias`: `[b, k, h, w]`, as the direct convolution gives it up to
/// rounding, by the largest block the image's size pays for.
pub fn conv3x3(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    conv3x3_by(x, weight, bias, Block::for_image(h, w).unwrap_or(Block::Two))
}

/// [`conv3x3`] by the given block, whatever the image's size.
pub fn conv3x3_by(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    block: Block,
) -> Result<Tensor> {
    match block {
        Block::Two => convolve::<F2, 2, 4>(x, weight, bias),
        Block::Four => convolve::<F4, 4, 6>(x, weight, bias),
    }
}

/// One Winograd algorithm F(M×M, 3×3) on `T`×`T` tiles (`T = M + 2`), as its three
/// one-dimensional transforms; each is applied along columns, then along rows.
trait Minimal<const M: usize, const T: usize> {
    /// `G g`: a kernel column (or row) of 3.
    fn kernel(g: [f32; 3]) -> [f32; T];
    /// `Bᵀ d`: an input column (or row) of the tile.
    fn input(d: [f32; T]) -> [f32; T];
    /// `Aᵀ m`: a product column (or row) back to outputs.
    fn output(m: [f32; T]) -> [f32; M];
}

/// F(2, 3), interpolating at 0, 1, −1 and ∞.
struct F2;

impl Minimal<2, 4> for F2 {
    fn kernel([g0, g1, g2]: [f32; 3]) -> [f32; 4] {
        [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2]
    }

    fn input([d0, d1, d2, d3]: [f32; 4]) -> [f32; 4] {
        [d0 - d2, d1 + d2, d2 - d1, d1 - d3]
    }

    fn output([m0, m1, m2, m3]: [f32; 4]) -> [f32; 2] {
        [m0 + m1 + m2, m1 - m2 - m3]
    }
}

/// F(4, 3), interpolating at 0, ±1, ±2 and ∞.
struct F4;

impl Minimal<4, 6> for F4 {
    fn kernel([g0, g1, g2]: [f32; 3]) -> [f32; 6] {
        let (even, odd) = (g0 + g2, g1);
        let (even4, odd2) = (g0 / 24.0 + g2 / 6.0, g1 / 12.0);
        [g0 / 4.0, -(even + odd) / 6.0, -(even - odd) / 6.0, even4 + odd2, even4 - odd2, g2]
    }

    fn input([d0, d1, d2, d3, d4, d5]: [f32; 6]) -> [f32; 6] {
        let (a, b) = (d4 - 4.0 * d2, d3 - 4.0 * d1);
        let (c, e) = (d4 - d2, 2.0 * (d3 - d1));
        [4.0 * d0 - 5.0 * d2 + d4, a + b, a - b, c + e, c - e, 4.0 * d1 - 5.0 * d3 + d5]
    }

    fn output([m0, m1, m2, m3, m4, m5]: [f32; 6]) -> [f32; 4] {
        let (sum1, diff1) = (m1 + m2, m1 - m2);
        let (sum2, diff2) = (m3 + m4, m3 - m4);
        [m0 + sum1 + sum2, diff1 + 2.0 * diff2, sum1 + 4.0 * sum2, diff1 + 8.0 * diff2 + m5]
    }
}

/// [`conv3x3`] by the algorithm `W`.
fn convolve<W: Minimal<M, T>, const M: usize, const T: usize>(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (k, c_in, kh, kw) = weight.dims4()?;
    if c != c_in || kh != 3 || kw != 3 {
        candle::bail!("winograd conv3x3: input {:?}, kernel {:?}", x.dims(), weight.dims())
    }
    if h == 0 || w == 0 {
        candle::bail!("winograd conv3x3: an empty {h}×{w} input")
    }
    let threads = candle::utils::get_num_threads().max(1);
    let positions = T * T;
    let kernels =
        with_values(&weight.contiguous()?, |g| transform_kernels::<W, M, T>(g, k, c, threads))?;
    // `[k, T², c]` seen as the T² products' left sides, `[T², k, c]`.
    let u = Tensor::from_vec(kernels, (k, positions, c), x.device())?.transpose(0, 1)?;
    let bias = match bias {
        Some(bias) => with_values(&bias.contiguous()?, <[f32]>::to_vec)?,
        None => vec![0f32; k],
    };
    let x = x.contiguous()?;
    let (tiles_y, tiles_x) = (h.div_ceil(M), w.div_ceil(M));
    let band_rows = (BAND_VALUES / (positions * c.max(k) * tiles_x).max(1)).clamp(1, tiles_y);
    let mut out = vec![0f32; b * k * h * w];
    for (image, out) in out.chunks_mut(k * h * w).enumerate() {
        for first in (0..tiles_y).step_by(band_rows) {
            let band = Band { first, rows: band_rows.min(tiles_y - first), tiles_x, h, w };
            let tiles = with_values(&x, |input| {
                let planes = &input[image * c * h * w..(image + 1) * c * h * w];
                transform_tiles::<W, M, T>(planes, c, band, threads)
            })?;
            let v =
                Tensor::from_vec(tiles, (c, positions, band.len()), x.device())?.transpose(0, 1)?;
            let products = u.matmul(&v)?;
            with_values(&products, |p| untransform::<W, M, T>(p, out, &bias, band, threads))?;
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

/// `G g Gᵀ` for every kernel, laid out `[k, T², c]`.
fn transform_kernels<W: Minimal<M, T>, const M: usize, const T: usize>(
    weight: &[f32],
    k: usize,
    c: usize,
    threads: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; k * T * T * c];
    split(&mut out, T * T * c, threads, |o, out| {
        for i in 0..c {
            let g = &weight[(o * c + i) * 9..(o * c + i + 1) * 9];
            // G g, column by column: T rows of 3.
            let columns: [[f32; T]; 3] =
                std::array::from_fn(|j| W::kernel([g[j], g[3 + j], g[6 + j]]));
            // (G g) Gᵀ, row by row.
            for r in 0..T {
                let row = W::kernel([columns[0][r], columns[1][r], columns[2][r]]);
                for (s, value) in row.into_iter().enumerate() {
                    out[(r * T + s) * c + i] = value;
                }
            }
        }
    });
    out
}

/// `Bᵀ d B` for every input tile of the band, laid out `[c, T², tiles]`. A tile row's
/// `T` input rows are combined whole first (`Bᵀ d`), then each combined row's tiles
/// (`· B`), so both passes run along rows.
fn transform_tiles<W: Minimal<M, T>, const M: usize, const T: usize>(
    planes: &[f32],
    c: usize,
    band: Band,
    threads: usize,
) -> Vec<f32> {
    let Band { first, rows, tiles_x, h, w } = band;
    let n = band.len();
    let mut out = vec![0f32; c * T * T * n];
    split(&mut out, T * T * n, threads, |channel, out| {
        let plane = &planes[channel * h * w..(channel + 1) * h * w];
        // Input rows with one zero column on the left and enough on the right for
        // every tile: value x sits at x + 1.
        let width = M * tiles_x + 2;
        let mut d = vec![[0f32; T]; width];
        let mut combined = vec![[0f32; T]; width];
        for row in 0..rows {
            let top = M * (first + row);
            for r in 0..T {
                let y = (top + r).checked_sub(1).filter(|y| *y < h);
                let line = y.map(|y| &plane[y * w..(y + 1) * w]);
                for (x, v) in d.iter_mut().enumerate() {
                    v[r] = match (line, x.checked_sub(1)) {
                        (Some(line), Some(x)) if x < w => line[x],
                        _ => 0.0,
                    };
                }
            }
            // Bᵀ d down each column.
            for (combined, d) in combined.iter_mut().zip(&d) {
                *combined = W::input(*d);
            }
            let base = row * tiles_x;
            for tx in 0..tiles_x {
                let columns = &combined[M * tx..M * tx + T];
                for r in 0..T {
                    let tile_row = W::input(std::array::from_fn(|j| columns[j][r]));
                    for (s, value) in tile_row.into_iter().enumerate() {
                        out[(r * T + s) * n + base + tx] = value;
                    }
                }
            }
        }
    });
    out
}

/// `Aᵀ m A` plus the bias for every output tile of the band, from the products laid
/// out `[T², k, tiles]`, into the image's output `[k, h, w]`.
fn untransform<W: Minimal<M, T>, const M: usize, const T: usize>(
    products: &[f32],
    out: &mut [f32],
    bias: &[f32],
    band: Band,
    threads: usize,
) {
    let Band { first, rows, tiles_x, h, w } = band;
    let n = band.len();
    let k = bias.len();
    split(out, h * w, threads, |o, plane| {
        for row in 0..rows {
            let base = row * tiles_x;
            // Tile `t`'s product at position (i, j).
            let m = |i: usize, j: usize, t: usize| products[((i * T + j) * k + o) * n + base + t];
            let top = M * (first + row);
            for tx in 0..tiles_x {
                // Aᵀ m down each column, then (Aᵀ m) A along each of the M rows.
                let columns: [[f32; M]; T] =
                    std::array::from_fn(|j| W::output(std::array::from_fn(|i| m(i, j, tx))));
                for r in 0..M.min(h - top) {
                    let values = W::output(std::array::from_fn(|j| columns[j][r]));
                    let (y, x) = (top + r, M * tx);
                    let dest = &mut plane[y * w + x..y * w + w.min(x + M)];
                    for (v, value) in dest.iter_mut().zip(values) {
                        *v = value + bias[o];
                    }
                }
            }
        }
    });
}
