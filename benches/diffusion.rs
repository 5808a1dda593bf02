//! The diffusion renderer's speed, by batch size: images/s and the time in each stage
//! (text encoding, denoising, decoding, image encoding, upload to a directory store).
//!
//! cargo bench --bench diffusion                     # tiny model, 64x64, CPU
//! cargo bench --bench diffusion -- --size 512 --width 10 --device cuda:0 --dtype f16
//!     (with --features cuda; --width scales the tiny model's channels toward a real
//!     model's arithmetic)
//!
//! Random weights cost what trained ones do to compute; the figures are the device's.

mod common;

use std::time::{Duration, Instant};

use common::arg;

use bytes::Bytes;
use renderq::{
    job::ImageFormat,
    render::{
        diffusion::{self, Pipeline, Sample, Settings, Timings, tiny},
        encode,
    },
    store::{DirStore, ObjectMeta, Store},
};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let size: u32 = arg("--size", "64").parse().expect("--size");
    let width: usize = arg("--width", "1").parse().expect("--width");
    let steps: u32 = arg("--steps", "4").parse().expect("--steps");
    let rounds: usize = arg("--rounds", "3").parse().expect("--rounds");
    let device = diffusion::device(&arg("--device", "cpu")).expect("--device");
    let dtype = match arg("--dtype", "") {
        d if d.is_empty() => diffusion::default_dtype(&device),
        d => diffusion::dtype(&d, &device).expect("--dtype"),
    };
    let dir = tempfile::tempdir().unwrap();
    let arch = tiny::architecture(width);
    tiny::write(dir.path(), &arch).unwrap();
    let files = diffusion::weights::local("tiny", &arch, dir.path()).unwrap();
    let pipeline = Pipeline::load(arch, &files, device.clone(), dtype).unwrap();
    let out = tempfile::tempdir().unwrap();
    let store = DirStore::new(out.path());
    println!(
        "tiny diffusion (channels x{width}), {size}x{size}, {steps} steps, guidance 5, {device:?} {dtype:?}, {rounds} rounds per batch size"
    );
    println!(
        "{:>5} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9}",
        "batch", "images/s", "text ms", "denoise ms", "decode ms", "encode ms", "upload ms"
    );
    // One warm-up call: first-use allocations are not the steady state.
    let warm = [Sample {
        prompt: "warm up".into(),
        negative_prompt: String::new(),
        seed: 0,
    }];
    let settings = Settings {
        width: size,
        height: size,
        steps,
        guidance: 5.0,
        sampler: Default::default(),
    };
    pipeline.render(&warm, &settings).unwrap();
    for batch in [1usize, 2, 4, 8] {
        let mut total = Timings::default();
        let (mut encode_t, mut upload_t) = (Duration::ZERO, Duration::ZERO);
        let started = Instant::now();
        for round in 0..rounds {
            let samples: Vec<Sample> = (0..batch)
                .map(|i| Sample {
                    prompt: format!("product photo {i} of a teal armchair"),
                    negative_prompt: "blurry".into(),
                    seed: (round * batch + i) as u64,
                })
                .collect();
            let (images, t) = pipeline.render(&samples, &settings).unwrap();
            total.text += t.text;
            total.denoise += t.denoise;
            total.decode += t.decode;
            for (i, image) in images.iter().enumerate() {
                let t0 = Instant::now();
                let png = encode(image, ImageFormat::Png).unwrap();
                encode_t += t0.elapsed();
                let t0 = Instant::now();
                let meta = ObjectMeta {
                    content_type: "image/png",
                    seed: i as u64,
                    model: "tiny".into(),
                    job_id: format!("{round}-{i}"),
                };
                store
                    .put(&format!("{batch}/{round}-{i}.png"), Bytes::from(png), &meta)
                    .await
                    .unwrap();
                upload_t += t0.elapsed();
            }
        }
        let images = (batch * rounds) as f64;
        let per = |d: Duration| ms(d) / rounds as f64;
        println!(
            "{:>5} {:>9.2} {:>9.1} {:>10.1} {:>9.1} {:>9.2} {:>9.2}",
            batch,
            images / started.elapsed().as_secs_f64(),
            per(total.text),
            per(total.denoise),
            per(total.decode),
            per(encode_t),
            per(upload_t),
        );
    }
}
