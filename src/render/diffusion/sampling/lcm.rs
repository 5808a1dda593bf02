//! Latent consistency sampling (Luo et al., 2023) for LCM-distilled models: each step
//! predicts the clean latents outright, then noises them down to the next timestep
//! with fresh noise. Steps are picked from a 50-step schedule.

use candle_core::{Result, Tensor};

use super::{Noise, NoiseSchedule, Prediction, Sampling, clean_from_vp, mix};
use crate::job::LCM_MAX_STEPS;

/// How far the consistency boundary condition reaches (diffusers' defaults).
const SIGMA_DATA: f64 = 0.5;
const TIMESTEP_SCALING: f64 = 10.0;

pub struct Lcm {
    prediction: Prediction,
    alphas: Vec<f64>,
    timesteps: Vec<f64>,
}

impl Lcm {
    pub fn new(schedule: &NoiseSchedule, steps: usize) -> Self {
        let original = LCM_MAX_STEPS as usize;
        let k = schedule.train_steps / original;
        // 999, 979, …, 19 for 1000 training steps; the steps are spread over them.
        let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
        let steps = steps.min(original);
        let timesteps = (0..steps)
            .map(|i| origin[i * original / steps] as f64)
            .collect();
        Lcm {
            prediction: schedule.prediction,
            alphas: schedule.alphas_cumprod(),
            timesteps,
        }
    }
}

impl Sampling for Lcm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        i: usize,
        x: &Tensor,
        out: &Tensor,
        noise: &mut dyn Noise,
    ) -> Result<Tensor> {
        let t = self.timesteps[i];
        let alpha = self.alphas[t as usize];
        let clean = clean_from_vp(self.prediction, x, out, alpha)?;
        let scaled = t * TIMESTEP_SCALING;
        let skip = SIGMA_DATA.powi(2) / (scaled * scaled + SIGMA_DATA.powi(2));
        let out_scale = scaled / (scaled * scaled + SIGMA_DATA.powi(2)).sqrt();
        let denoised = mix(&clean, out_scale, x, skip)?;
        match self.timesteps.get(i + 1) {
            Some(&next) => {
                let next = self.alphas[next as usize];
                mix(&denoised, next.sqrt(), &noise.draw()?, (1.0 - next).sqrt())
            }
            None => Ok(denoised),
        }
    }
}
