//! Samplers: how latents go from noise to an image in a job's `steps` UNet calls, over
//! the noise schedule the model was trained with. renderq has its own (candle ships
//! only DDIM, DDPM, Euler ancestral with device-drawn noise, and UniPC).
//!
//! Each sampler works on f32 latents whatever the model's dtype, as diffusers does, so
//! a half-precision model loses nothing between steps. Those that add noise at each
//! step draw it through `Noise`, from the job's seed on the host.

mod ddim;
mod dpmpp;
mod euler;
mod lcm;

use candle_core::{Result, Tensor};

pub use crate::job::Sampler;

/// How the betas grow over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    /// Linear in the square root of beta (every Stable Diffusion model).
    ScaledLinear,
    /// Linear in beta.
    Linear,
}

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The noise (SD 1.x, SDXL, the Turbo models).
    Epsilon,
    /// The velocity (SD 2.x at 768 pixels).
    V,
}

/// How the inference steps are spread over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    /// Evenly from 0, plus `steps_offset` (SD 1.x, 2.x, SDXL).
    Leading,
    /// Evenly down from the last timestep (the Turbo models, few steps).
    Trailing,
    /// Evenly over the whole range, ends included.
    Linspace,
}

/// The noise schedule a model was trained with (diffusers' `scheduler_config.json`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoiseSchedule {
    /// The first beta.
    pub beta_start: f64,
    /// The last beta.
    pub beta_end: f64,
    /// How the betas grow.
    pub beta_schedule: BetaSchedule,
    /// Training timesteps (1000).
    pub train_steps: usize,
    /// What the UNet predicts.
    pub prediction: Prediction,
    /// How inference steps are spread.
    pub spacing: Spacing,
    /// Added to leading timesteps.
    pub steps_offset: usize,
    /// Whether the step after timestep 0 is noise-free (else it is timestep 0's).
    pub set_alpha_to_one: bool,
}

impl Default for NoiseSchedule {
    /// Stable Diffusion's.
    fn default() -> Self {
        NoiseSchedule {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            train_steps: 1000,
            prediction: Prediction::Epsilon,
            spacing: Spacing::Leading,
            steps_offset: 1,
            set_alpha_to_one: false,
        }
    }
}

impl NoiseSchedule {
    /// The share of signal left at each training timestep (ᾱ).
    pub fn alphas_cumprod(&self) -> Vec<f64> {
        let n = self.train_steps.max(2);
        let along = |a: f64, b: f64, i: usize| a + (b - a) * i as f64 / (n - 1) as f64;
        let mut product = 1.0;
        (0..n)
            .map(|i| {
                let beta = match self.beta_schedule {
                    BetaSchedule::ScaledLinear => {
                        along(self.beta_start.sqrt(), self.beta_end.sqrt(), i).powi(2)
                    }
                    BetaSchedule::Linear => along(self.beta_start, self.beta_end, i),
                };
                product *= 1.0 - beta;
                product
            })
            .collect()
    }

    /// The noise level σ = √((1−ᾱ)/ᾱ) of each training timestep, rising.
    pub fn sigmas(&self) -> Vec<f64> {
        self.alphas_cumprod()
            .into_iter()
            .map(|a| ((1.0 - a) / a).sqrt())
            .collect()
    }

    /// The training timesteps `steps` inference steps visit, highest first.
    pub fn timesteps(&self, steps: usize) -> Vec<f64> {
        let (n, steps) = (self.train_steps, steps.max(1));
        match self.spacing {
            Spacing::Leading => {
                let ratio = n / steps;
                (0..steps)
                    .rev()
                    .map(|i| (i * ratio + self.steps_offset).min(n - 1) as f64)
                    .collect()
            }
            Spacing::Trailing => {
                let ratio = n as f64 / steps as f64;
                (0..steps)
                    .map(|i| ((n as f64 - i as f64 * ratio).round() - 1.0).max(0.0))
                    .collect()
            }
            Spacing::Linspace if steps == 1 => vec![0.0],
            Spacing::Linspace => (0..steps)
                .rev()
                .map(|i| i as f64 * (n - 1) as f64 / (steps - 1) as f64)
                .collect(),
        }
    }
}

/// The noise level at a fractional timestep, linear between training timesteps.
fn sigma_at(sigmas: &[f64], t: f64) -> f64 {
    let t = t.clamp(0.0, (sigmas.len() - 1) as f64);
    let low = t.floor() as usize;
    let high = (low + 1).min(sigmas.len() - 1);
    sigmas[low] + (sigmas[high] - sigmas[low]) * (t - low as f64)
}

/// The fractional timestep of a noise level, linear in log σ between training timesteps.
fn timestep_of(sigmas: &[f64], sigma: f64) -> f64 {
    let log = sigma.ln();
    let last = sigmas.len() - 1;
    let high = sigmas.partition_point(|s| s.ln() < log).clamp(1, last);
    let (lo, hi) = (sigmas[high - 1].ln(), sigmas[high].ln());
    let w = ((log - lo) / (hi - lo)).clamp(0.0, 1.0);
    (high - 1) as f64 + w
}

/// `steps` noise levels from `max` down to `min`, spaced as Karras et al. (2022) do
/// (ρ = 7): more steps where the noise is low and details form.
fn karras(min: f64, max: f64, steps: usize) -> Vec<f64> {
    const RHO: f64 = 7.0;
    let (lo, hi) = (min.powf(1.0 / RHO), max.powf(1.0 / RHO));
    (0..steps)
        .map(|i| {
            let ramp = if steps == 1 {
                0.0
            } else {
                i as f64 / (steps - 1) as f64
            };
            (hi + ramp * (lo - hi)).powf(RHO)
        })
        .collect()
}

/// `a·x + b·y`, in the tensors' dtype.
fn mix(x: &Tensor, a: f64, y: &Tensor, b: f64) -> Result<Tensor> {
    x.affine(a, 0.0)? + y.affine(b, 0.0)?
}

/// The clean latents the UNet's output implies, for a sample with signal share `alpha`
/// (ᾱ) in the variance-preserving form `x = √ᾱ·x₀ + √(1−ᾱ)·ε`.
fn clean_from_vp(p: Prediction, x: &Tensor, out: &Tensor, alpha: f64) -> Result<Tensor> {
    let (a, b) = (alpha.sqrt(), (1.0 - alpha).sqrt());
    match p {
        Prediction::Epsilon => mix(x, 1.0 / a, out, -b / a),
        Prediction::V => mix(x, a, out, -b),
    }
}

/// Fresh standard-normal noise for a whole batch, one generator per job (seeded by
/// it), so each job's noise is its own whatever else shares the call.
pub trait Noise {
    /// Noise shaped like the batch's latents, in f32.
    fn draw(&mut self) -> Result<Tensor>;
}

/// One sampling run: the timesteps to call the UNet at and how each step moves.
pub trait Sampling: Send {
    /// The UNet's timestep at each step, highest first.
    fn timesteps(&self) -> &[f64];
    /// The first latents, from standard-normal noise (as they are, for samplers in the
    /// variance-preserving form).
    fn start(&self, noise: &Tensor) -> Result<Tensor> {
        Ok(noise.clone())
    }
    /// What the UNet is given at step `i` (the latents as they are, for samplers in
    /// the variance-preserving form).
    fn model_input(&self, _i: usize, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    /// The latents after step `i`, from the UNet's (guided) output.
    fn step(&mut self, i: usize, x: &Tensor, out: &Tensor, noise: &mut dyn Noise)
    -> Result<Tensor>;
}

/// A run of `sampler` over `schedule` in `steps` steps.
pub fn sampling(sampler: Sampler, schedule: &NoiseSchedule, steps: usize) -> Box<dyn Sampling> {
    let steps = steps.max(1);
    match sampler {
        Sampler::Ddim => Box::new(ddim::Ddim::new(schedule, steps)),
        Sampler::Euler => Box::new(euler::Euler::new(schedule, steps, false)),
        Sampler::EulerA => Box::new(euler::Euler::new(schedule, steps, true)),
        Sampler::Dpmpp2m => Box::new(dpmpp::Dpmpp2m::new(schedule, steps)),
        Sampler::Lcm => Box::new(lcm::Lcm::new(schedule, steps)),
    }
}

#[cfg(test)]
mod tests;
