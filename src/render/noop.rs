//! `noop`: a blank image of the asked size after a fixed delay per device call. It
//! stands in for a device in benchmarks and failure drills.

use std::time::Duration;

use async_trait::async_trait;
use image::RgbImage;

use super::{RenderError, RenderRequest, Renderer};

pub struct NoopRenderer {
    delay: Duration,
}

impl NoopRenderer {
    pub fn new(delay_ms: u64) -> Self {
        NoopRenderer {
            delay: Duration::from_millis(delay_ms),
        }
    }
}

#[async_trait]
impl Renderer for NoopRenderer {
    async fn render(&self, batch: &[RenderRequest]) -> Vec<Result<RgbImage, RenderError>> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        batch
            .iter()
            .map(|r| Ok(RgbImage::new(r.width, r.height)))
            .collect()
    }
}
