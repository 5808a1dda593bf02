//! `noop`: a blank image of the asked size after a fixed delay per device call. It
//! stands in for a device in benchmarks and failure drills.

use std::time::Duration;

use async_trait::async_trait;
use image::RgbImage;

use super::{RenderError, RenderRequest, Renderer};

pub struct NoopRenderer {
    delay: Duration,
    panic_on: Option<String>,
}

impl NoopRenderer {
    pub fn new(delay_ms: u64) -> Self {
        NoopRenderer {
            delay: Duration::from_millis(delay_ms),
            panic_on: None,
        }
    }

    /// For failure drills: panic on any batch holding a prompt that contains `text`
    /// (`RENDERQ_NOOP_PANIC_ON`), as a buggy model would on a poison input.
    pub fn panicking_on(mut self, text: Option<String>) -> Self {
        self.panic_on = text.filter(|t| !t.is_empty());
        self
    }
}

#[async_trait]
impl Renderer for NoopRenderer {
    async fn render(&self, batch: &[RenderRequest]) -> Vec<Result<RgbImage, RenderError>> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if let Some(poison) = &self.panic_on
            && batch.iter().any(|r| r.prompt.contains(poison.as_str()))
        {
            panic!("noop: poison prompt (contains {poison:?})");
        }
        batch
            .iter()
            .map(|r| Ok(RgbImage::new(r.width, r.height)))
            .collect()
    }
}
