//! DPM++ 2M (Lu et al., 2022) over Karras noise levels: a second-order multistep
//! solver that reuses the previous step's prediction, so it costs one UNet call a step.
//! The last step, down to no noise, is first order.

use candle_core::{Result, Tensor};

use super::{
    Noise, NoiseSchedule, Prediction, Sampling,
    euler::{clean_from_ve, ve_input},
    karras, mix, timestep_of,
};

pub struct Dpmpp2m {
    prediction: Prediction,
    timesteps: Vec<f64>,
    /// σ at each step, then 0.
    sigmas: Vec<f64>,
    /// The previous step's clean latents.
    previous: Option<Tensor>,
}

impl Dpmpp2m {
    pub fn new(schedule: &NoiseSchedule, steps: usize) -> Self {
        let trained = schedule.sigmas();
        let mut sigmas = karras(trained[0], trained[trained.len() - 1], steps);
        let timesteps = sigmas.iter().map(|&s| timestep_of(&trained, s)).collect();
        sigmas.push(0.0);
        Dpmpp2m {
            prediction: schedule.prediction,
            timesteps,
            sigmas,
            previous: None,
        }
    }
}

impl Sampling for Dpmpp2m {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn start(&self, noise: &Tensor) -> Result<Tensor> {
        // Unit variance once scaled for the UNet, as diffusers starts it.
        noise.affine((self.sigmas[0].powi(2) + 1.0).sqrt(), 0.0)
    }

    fn model_input(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        ve_input(x, self.sigmas[i])
    }

    fn step(&mut self, i: usize, x: &Tensor, out: &Tensor, _: &mut dyn Noise) -> Result<Tensor> {
        let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
        let clean = clean_from_ve(self.prediction, x, out, sigma)?;
        let target = match (&self.previous, i.checked_sub(1)) {
            (Some(previous), Some(before)) if next > 0.0 => {
                // h: the step in log σ; r: the last step's over this one.
                let h = (sigma / next).ln();
                let r = (self.sigmas[before] / sigma).ln() / h;
                mix(&clean, 1.0 + 0.5 / r, previous, -0.5 / r)?
            }
            _ => clean.clone(),
        };
        self.previous = Some(clean);
        let ratio = next / sigma;
        mix(x, ratio, &target, 1.0 - ratio)
    }
}
