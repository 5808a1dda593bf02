//! DDIM with η = 0 (Song et al., 2020): each step jumps to the next timestep along the
//! line through the predicted clean latents. Adds no noise of its own.

use candle_core::{Result, Tensor};

use super::{Noise, NoiseSchedule, Prediction, Sampling, clean_from_vp, mix};

pub struct Ddim {
    prediction: Prediction,
    alphas: Vec<f64>,
    timesteps: Vec<f64>,
    /// Training timesteps between two inference steps.
    stride: usize,
    /// ᾱ after the last step.
    final_alpha: f64,
}

impl Ddim {
    pub fn new(schedule: &NoiseSchedule, steps: usize) -> Self {
        let alphas = schedule.alphas_cumprod();
        Ddim {
            prediction: schedule.prediction,
            final_alpha: if schedule.set_alpha_to_one {
                1.0
            } else {
                alphas[0]
            },
            alphas,
            // Whole timesteps, as DDIM's table of ᾱ is indexed by them.
            timesteps: schedule
                .timesteps(steps)
                .iter()
                .map(|t| t.round())
                .collect(),
            stride: schedule.train_steps / steps,
        }
    }
}

impl Sampling for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(&mut self, i: usize, x: &Tensor, out: &Tensor, _: &mut dyn Noise) -> Result<Tensor> {
        let t = self.timesteps[i] as usize;
        let alpha = self.alphas[t.min(self.alphas.len() - 1)];
        let next = match t.checked_sub(self.stride) {
            Some(prev) => self.alphas[prev],
            None => self.final_alpha,
        };
        let clean = clean_from_vp(self.prediction, x, out, alpha)?;
        // The noise the output implies: x = √ᾱ·x₀ + √(1−ᾱ)·ε.
        let eps = mix(
            x,
            1.0 / (1.0 - alpha).sqrt(),
            &clean,
            -(alpha / (1.0 - alpha)).sqrt(),
        )?;
        mix(&clean, next.sqrt(), &eps, (1.0 - next).sqrt())
    }
}
