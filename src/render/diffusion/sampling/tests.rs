use candle_core::{Device, Tensor};
use candle_transformers::models::stable_diffusion::{
    ddim::DDIMSchedulerConfig,
    schedulers::{PredictionType, SchedulerConfig, TimestepSpacing},
};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use super::*;

const SHAPE: (usize, usize, usize, usize) = (2, 4, 3, 5);

fn normal(seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = SHAPE.0 * SHAPE.1 * SHAPE.2 * SHAPE.3;
    let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    Tensor::from_vec(v, SHAPE, &Device::Cpu).unwrap()
}

struct Seeded(u64);

impl Noise for Seeded {
    fn draw(&mut self) -> Result<Tensor> {
        self.0 += 1;
        Ok(normal(self.0))
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// A UNet that knows the clean latents: from what it is given at timestep `t` it
/// answers the exact noise (or velocity). Every sampler must then land on them, which
/// checks its timesteps, its input scaling and its steps together.
fn oracle(schedule: &NoiseSchedule, clean: &Tensor, input: &Tensor, t: f64) -> Tensor {
    let sigmas = schedule.sigmas();
    let (lo, hi) = (
        t.floor() as usize,
        (t.floor() as usize + 1).min(sigmas.len() - 1),
    );
    let log = sigmas[lo].ln() + (sigmas[hi].ln() - sigmas[lo].ln()) * (t - lo as f64);
    let alpha = 1.0 / (1.0 + (2.0 * log).exp());
    let (a, b) = (alpha.sqrt(), (1.0 - alpha).sqrt());
    let eps = mix(input, 1.0 / b, clean, -a / b).unwrap();
    match schedule.prediction {
        Prediction::Epsilon => eps,
        Prediction::V => mix(&eps, a, clean, -b).unwrap(),
    }
}

fn run(sampler: Sampler, schedule: &NoiseSchedule, steps: usize, clean: &Tensor) -> Tensor {
    let mut s = sampling(sampler, schedule, steps);
    let mut noise = Seeded(100);
    let mut x = s.start(&normal(7)).unwrap();
    for (i, t) in s.timesteps().to_vec().into_iter().enumerate() {
        let out = oracle(schedule, clean, &s.model_input(i, &x).unwrap(), t);
        x = s.step(i, &x, &out, &mut noise).unwrap();
    }
    x
}

#[test]
fn every_sampler_lands_on_the_clean_latents_a_perfect_unet_implies() {
    let clean = normal(1);
    for sampler in Sampler::ALL {
        for prediction in [Prediction::Epsilon, Prediction::V] {
            for spacing in [Spacing::Leading, Spacing::Trailing] {
                for steps in [1, 4, 25] {
                    let schedule = NoiseSchedule {
                        prediction,
                        spacing,
                        set_alpha_to_one: true,
                        ..Default::default()
                    };
                    let got = run(sampler, &schedule, steps, &clean);
                    let off = max_diff(&got, &clean);
                    assert!(
                        off < 2e-3,
                        "{sampler:?} {prediction:?} {spacing:?} {steps} steps: off by {off}"
                    );
                }
            }
        }
    }
}

#[test]
fn ddim_steps_as_candles_ddim_does() {
    for (prediction, theirs) in [
        (Prediction::Epsilon, PredictionType::Epsilon),
        (Prediction::V, PredictionType::VPrediction),
    ] {
        for (spacing, their_spacing) in [
            (Spacing::Leading, TimestepSpacing::Leading),
            (Spacing::Trailing, TimestepSpacing::Trailing),
        ] {
            // Step counts that divide 1000: candle's trailing spacing takes one step too
            // many otherwise (31 timesteps for 30 steps), where diffusers' does not.
            for steps in [1, 4, 25, 40] {
                let ours = NoiseSchedule {
                    prediction,
                    spacing,
                    ..Default::default()
                };
                let mut reference = DDIMSchedulerConfig {
                    prediction_type: theirs,
                    timestep_spacing: their_spacing,
                    ..Default::default()
                }
                .build(steps)
                .unwrap();
                let mut mine = sampling(Sampler::Ddim, &ours, steps);
                let expected: Vec<f64> = reference.timesteps().iter().map(|&t| t as f64).collect();
                assert_eq!(mine.timesteps(), expected.as_slice());
                let mut x = normal(3);
                for (i, &t) in reference.timesteps().to_vec().iter().enumerate() {
                    let out = normal(10 + i as u64);
                    let want = reference.step(&out, t, &x).unwrap();
                    let got = mine.step(i, &x, &out, &mut Seeded(0)).unwrap();
                    let off = max_diff(&got, &want);
                    assert!(
                        off < 1e-4,
                        "{prediction:?} {spacing:?} step {i}: off by {off}"
                    );
                    x = want;
                }
            }
        }
    }
}

#[test]
fn timesteps_are_spaced_as_diffusers_spaces_them() {
    let leading = NoiseSchedule::default();
    assert_eq!(leading.timesteps(4), vec![751.0, 501.0, 251.0, 1.0]);
    let trailing = NoiseSchedule {
        spacing: Spacing::Trailing,
        ..Default::default()
    };
    assert_eq!(trailing.timesteps(4), vec![999.0, 749.0, 499.0, 249.0]);
    assert_eq!(trailing.timesteps(1), vec![999.0]);
    let linspace = NoiseSchedule {
        spacing: Spacing::Linspace,
        ..Default::default()
    };
    assert_eq!(linspace.timesteps(3), vec![999.0, 499.5, 0.0]);
    // LCM picks from 999, 979, …, 19.
    let lcm = sampling(Sampler::Lcm, &leading, 4);
    assert_eq!(lcm.timesteps(), &[999.0, 759.0, 499.0, 259.0]);
}

#[test]
fn karras_levels_run_from_the_highest_to_the_lowest_trained_noise() {
    let schedule = NoiseSchedule::default();
    let trained = schedule.sigmas();
    let levels = karras(trained[0], trained[999], 10);
    assert!((levels[0] - trained[999]).abs() < 1e-9);
    assert!((levels[9] - trained[0]).abs() < 1e-9);
    assert!(levels.windows(2).all(|w| w[0] > w[1]), "{levels:?}");
    // A noise level maps back to the timestep it came from.
    for t in [0usize, 1, 250, 998, 999] {
        assert!(
            (timestep_of(&trained, trained[t]) - t as f64).abs() < 1e-9,
            "{t}"
        );
    }
    let s = sampling(Sampler::Dpmpp2m, &schedule, 10);
    assert!((s.timesteps()[0] - 999.0).abs() < 1e-9);
    assert!(s.timesteps()[9].abs() < 1e-9);
}

#[test]
fn ancestral_steps_take_their_noise_from_the_generator_they_are_given() {
    let schedule = NoiseSchedule::default();
    let ends = |seed: u64| {
        let mut s = sampling(Sampler::EulerA, &schedule, 4);
        let mut noise = Seeded(seed);
        let mut x = s.start(&normal(7)).unwrap();
        for i in 0..4 {
            let out = s.model_input(i, &x).unwrap().affine(0.5, 0.0).unwrap();
            x = s.step(i, &x, &out, &mut noise).unwrap();
        }
        x
    };
    assert_eq!(
        max_diff(&ends(1), &ends(1)),
        0.0,
        "same generator, same result"
    );
    assert!(
        max_diff(&ends(1), &ends(50)) > 1e-3,
        "other noise, other result"
    );
}
