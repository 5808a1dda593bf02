//! The CPU convolutions of a Stable Diffusion VAE decode, layer shape by layer shape:
//! candle-nn's, renderq's column matrices, Winograd's method, and what the models run
//! (Winograd's method where it pays). Prints milliseconds per call and GFLOP/s of the
//! direct method (so a faster method shows more than the machine's peak).
//!
//! cargo bench --bench conv                  # the VAE decoder's layers at 256×256
//! cargo bench --bench conv -- --size 512 --rounds 5
//! cargo bench --bench conv -- --model unet  # the UNet's (SD 2.x widths)
//! cargo bench --bench conv -- --model upsample  # the decoder's upsamplers, fused or not
//!
//! Threads: RAYON_NUM_THREADS (the matrix products and the copies both follow it).

mod common;

use std::time::Instant;

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig};
use candle_transformers::models::cpu_conv::{self, winograd::Block};
use common::arg;

/// Best of `rounds` calls of `f`, in seconds.
fn best(rounds: usize, mut f: impl FnMut() -> Result<Tensor>) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let started = Instant::now();
        f()?;
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn main() -> Result<()> {
    let size: usize = arg("--size", "256").parse().expect("--size");
    let rounds: usize = arg("--rounds", "3").parse().expect("--rounds");
    let dev = Device::Cpu;
    if arg("--model", "vae") == "upsample" {
        return upsamplers(size, rounds, &dev);
    }
    // (channels in, channels out, side) of the model's 3×3 layers.
    let latent = size / 8;
    let layers = match arg("--model", "vae").as_str() {
        "unet" => vec![
            (320, 320, latent),
            (640, 640, latent / 2),
            (1280, 1280, latent / 4),
            (1280, 1280, latent / 8),
        ],
        _ => vec![
            (512, 512, latent),
            (512, 512, latent * 2),
            (512, 256, latent * 4),
            (256, 256, latent * 4),
            (256, 128, latent * 8),
            (128, 128, latent * 8),
        ],
    };
    println!("3×3 convolutions, padding 1, f32, best of {rounds}; ms per call (GFLOP/s)");
    println!(
        "{:>18} {:>16} {:>16} {:>16} {:>16} {:>16}",
        "layer", "candle-nn", "columns", "winograd 2×2", "winograd 4×4", "renderq"
    );
    for (c_in, c_out, side) in layers {
        let x = Tensor::randn(0f32, 1., (1, c_in, side, side), &dev)?;
        let weight = Tensor::randn(0f32, 0.05, (c_out, c_in, 3, 3), &dev)?;
        let bias = Tensor::randn(0f32, 1., c_out, &dev)?;
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let nn = Conv2d::new(weight.clone(), Some(bias.clone()), cfg);
        let flops = 2.0 * 9.0 * (c_in * c_out * side * side) as f64;
        let show = |secs: f64| format!("{:7.1} ({:5.1})", secs * 1e3, flops / secs / 1e9);
        let candle = best(rounds, || nn.forward(&x))?;
        let columns = best(rounds, || {
            cpu_conv::by_columns(&x, &weight, Some(&bias), 1, 1, 1)
        })?;
        let winograd = |block| {
            best(rounds, || {
                cpu_conv::winograd::conv3x3_by(&x, &weight, Some(&bias), block)
            })
        };
        let (two, four) = (winograd(Block::Two)?, winograd(Block::Four)?);
        let renderq = best(rounds, || {
            cpu_conv::conv2d(&x, &weight, Some(&bias), 1, 1, 1)
        })?;
        println!(
            "{:>18} {:>16} {:>16} {:>16} {:>16} {:>16}",
            format!("{c_in}→{c_out} {side}²"),
            show(candle),
            show(columns),
            show(two),
            show(four),
            show(renderq)
        );
    }
    Ok(())
}

/// The VAE decoder's three upsamplers: candle's upsample then the convolution renderq
/// would run on the upsampled image, against the fused pair.
fn upsamplers(size: usize, rounds: usize, dev: &Device) -> Result<()> {
    println!("2× upsample + 3×3 convolution, f32, best of {rounds}; ms per call (GFLOP/s)");
    println!(
        "{:>18} {:>16} {:>16} {:>16}",
        "layer (input)", "upsample", "+ conv", "fused"
    );
    let latent = size / 8;
    for (c, side) in [(512, latent), (512, latent * 2), (256, latent * 4)] {
        let x = Tensor::randn(0f32, 1., (1, c, side, side), dev)?;
        let weight = Tensor::randn(0f32, 0.05, (c, c, 3, 3), dev)?;
        let bias = Tensor::randn(0f32, 1., c, dev)?;
        let flops = 2.0 * 9.0 * (c * c * 4 * side * side) as f64;
        let show = |secs: f64| format!("{:7.1} ({:5.1})", secs * 1e3, flops / secs / 1e9);
        let up = best(rounds, || x.upsample_nearest2d(2 * side, 2 * side))?;
        let separate = best(rounds, || {
            let up = x.upsample_nearest2d(2 * side, 2 * side)?;
            cpu_conv::conv2d(&up, &weight, Some(&bias), 1, 1, 1)
        })?;
        let fused = best(rounds, || {
            cpu_conv::upsample::conv3x3(&x, &weight, Some(&bias))
        })?;
        println!(
            "{:>18} {:>16} {:>16} {:>16}",
            format!("{c}→{c} {side}²"),
            format!("{:7.1}", up * 1e3),
            show(separate),
            show(fused)
        );
    }
    Ok(())
}
