//! `noop`: a blank image of the asked size after a fixed delay per device call. It
//! stands in for a device in benchmarks and failure drills.

use std::time::Duration;

use async_trait::async_trait;
use image::RgbImage;

use super::{PanicOn, RenderError, RenderRequest, Renderer};

/// A blank image of the asked size per job, after a fixed delay per call (benchmarks, drills).
pub struct NoopRenderer {
    delay: Duration,
    lanes: usize,
    panic_on: PanicOn,
}

impl NoopRenderer {
    /// A noop renderer that waits `delay_ms` per device call.
    pub fn new(delay_ms: u64) -> Self {
        NoopRenderer {
            delay: Duration::from_millis(delay_ms),
            lanes: 1,
            panic_on: PanicOn::default(),
        }
    }

    /// Takes `lanes` calls at once, as that many devices would (benchmarks).
    pub fn with_lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes.max(1);
        self
    }

    /// For failure drills: panic on a poison prompt (`--panic-on`).
    pub fn panicking_on(mut self, poison: PanicOn) -> Self {
        self.panic_on = poison;
        self
    }
}

#[async_trait]
impl Renderer for NoopRenderer {
    async fn render(&self, batch: &[RenderRequest]) -> Vec<Result<RgbImage, RenderError>> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.panic_on.check(batch.iter().map(|r| r.prompt.as_str()));
        batch
            .iter()
            .map(|r| Ok(RgbImage::new(r.width, r.height)))
            .collect()
    }

    fn lanes(&self) -> usize {
        self.lanes
    }
}
