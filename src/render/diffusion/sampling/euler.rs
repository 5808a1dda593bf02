//! Euler and Euler ancestral (Karras et al., 2022, as diffusers runs them): steps
//! along the noise level σ, latents in the form `x = x₀ + σ·ε`. The ancestral one
//! goes a little below the next level and adds fresh noise back up to it.

use candle_core::{Result, Tensor};

use super::{Noise, NoiseSchedule, Prediction, Sampling, Spacing, mix, sigma_at};

pub struct Euler {
    prediction: Prediction,
    timesteps: Vec<f64>,
    /// σ at each step, then 0.
    sigmas: Vec<f64>,
    start_scale: f64,
    ancestral: bool,
}

impl Euler {
    pub fn new(schedule: &NoiseSchedule, steps: usize, ancestral: bool) -> Self {
        let trained = schedule.sigmas();
        let timesteps = schedule.timesteps(steps);
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| sigma_at(&trained, t)).collect();
        let top = sigmas[0];
        sigmas.push(0.0);
        Euler {
            prediction: schedule.prediction,
            timesteps,
            sigmas,
            // diffusers' choice: leading schedules start at unit variance.
            start_scale: match schedule.spacing {
                Spacing::Leading => (top * top + 1.0).sqrt(),
                Spacing::Trailing | Spacing::Linspace => top,
            },
            ancestral,
        }
    }
}

/// The clean latents the UNet's output implies at noise level `sigma`, for latents in
/// the form `x = x₀ + σ·ε`.
pub(super) fn clean_from_ve(p: Prediction, x: &Tensor, out: &Tensor, sigma: f64) -> Result<Tensor> {
    match p {
        Prediction::Epsilon => mix(x, 1.0, out, -sigma),
        Prediction::V => {
            let s2 = sigma * sigma + 1.0;
            mix(x, 1.0 / s2, out, -sigma / s2.sqrt())
        }
    }
}

/// The UNet sees variance-preserving latents: `x / √(σ²+1)`.
pub(super) fn ve_input(x: &Tensor, sigma: f64) -> Result<Tensor> {
    x.affine(1.0 / (sigma * sigma + 1.0).sqrt(), 0.0)
}

impl Sampling for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn start(&self, noise: &Tensor) -> Result<Tensor> {
        noise.affine(self.start_scale, 0.0)
    }

    fn model_input(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        ve_input(x, self.sigmas[i])
    }

    fn step(
        &mut self,
        i: usize,
        x: &Tensor,
        out: &Tensor,
        noise: &mut dyn Noise,
    ) -> Result<Tensor> {
        let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
        let clean = clean_from_ve(self.prediction, x, out, sigma)?;
        let (down, up) = if self.ancestral && next > 0.0 {
            let up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).sqrt();
            ((next * next - up * up).sqrt(), up)
        } else {
            (next, 0.0)
        };
        // x + (x − x₀)/σ · (σ_down − σ), written as a mix of x and x₀.
        let r = down / sigma;
        let moved = mix(x, r, &clean, 1.0 - r)?;
        if up > 0.0 {
            moved + noise.draw()?.affine(up, 0.0)?
        } else {
            Ok(moved)
        }
    }
}
