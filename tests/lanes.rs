//! The render stage's lanes, through a real worker on the embedded record: renderers
//! that name the same device take turns on it; renderers of their own run side by
//! side.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use common::*;
use image::RgbImage;
use renderq::{
    job::JobState,
    render::{RenderError, RenderRequest, Renderer, Renderers},
};

/// Calls in flight across every renderer that shares it, and the most seen at once.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    most: AtomicUsize,
}

/// A renderer that takes 150 ms a call, on `device` (or a lane of its own).
struct Slow {
    device: Option<String>,
    gauge: Arc<Gauge>,
}

#[async_trait]
impl Renderer for Slow {
    async fn render(&self, batch: &[RenderRequest]) -> Vec<Result<RgbImage, RenderError>> {
        let now = self.gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.gauge.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
        self.gauge.now.fetch_sub(1, Ordering::SeqCst);
        batch
            .iter()
            .map(|r| Ok(RgbImage::new(r.width, r.height)))
            .collect()
    }

    fn device(&self) -> Option<String> {
        self.device.clone()
    }
}

/// Renders four jobs of each of two models, each model on `device`; returns the most
/// calls that were in flight at once.
async fn most_at_once(device: Option<&str>) -> usize {
    let env = Env::with(Kind::Sqlite).await;
    let lines: Vec<String> = (0..8)
        .map(|i| {
            let model = if i % 2 == 0 { "sd-1.5" } else { "sd-2.1" };
            format!(r#"{{"prompt":"p{i}","model":"{model}","width":8,"height":8}}"#)
        })
        .collect();
    env.submit(&lines.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let gauge = Arc::new(Gauge::default());
    let mut renderers = Renderers::builtin(0);
    for model in ["sd-1.5", "sd-2.1"] {
        let slow = Slow {
            device: device.map(str::to_string),
            gauge: gauge.clone(),
        };
        renderers.insert(model, Arc::new(slow));
    }
    let dir = tempfile::tempdir().unwrap();
    let rows = env
        .work_until_done(8, renderers, dir.path(), Duration::from_secs(30))
        .await;
    assert!(
        rows.iter().all(|r| r.state == JobState::Succeeded),
        "{rows:?}"
    );
    gauge.most.load(Ordering::SeqCst)
}

#[tokio::test]
async fn models_on_one_device_take_turns() {
    assert_eq!(most_at_once(Some("cuda:0")).await, 1);
}

#[tokio::test]
async fn models_with_lanes_of_their_own_run_side_by_side() {
    assert_eq!(most_at_once(None).await, 2);
}
