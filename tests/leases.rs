//! Leases are kept alive by heartbeats, not by finishing quickly: a render longer
//! than several leases, with another worker waiting for work on the same queue, is
//! never taken over.

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
use renderq::render::{RenderError, RenderRequest, Renderer, Renderers};

/// Renders each call for `took`, counting calls.
struct Slow {
    took: Duration,
    calls: AtomicUsize,
}

#[async_trait]
impl Renderer for Slow {
    async fn render(&self, batch: &[RenderRequest]) -> Vec<Result<RgbImage, RenderError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.took).await;
        batch
            .iter()
            .map(|r| Ok(RgbImage::new(r.width, r.height)))
            .collect()
    }
}

async fn a_render_longer_than_three_leases_is_never_taken_over(env: Env) {
    let cfg = fast_config();
    let slow = Arc::new(Slow {
        took: cfg.lease * 7 / 2,
        calls: AtomicUsize::new(0),
    });
    let renderers = || {
        let mut r = Renderers::builtin(0);
        r.insert("remote/slow", slow.clone());
        r
    };
    env.submit(&[r#"{"prompt":"takes a while","model":"remote/slow","width":8,"height":8}"#])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(renderq::store::DirStore::new(dir.path()));
    let (stop_a, a) = env.spawn_worker(cfg.clone(), store.clone(), renderers());
    let (stop_b, b) = env.spawn_worker(cfg.clone(), store, renderers());
    let rows = env.wait_terminal(1, Duration::from_secs(60)).await;
    stop_a.cancel();
    stop_b.cancel();
    a.await.unwrap();
    b.await.unwrap();
    assert_eq!(
        (rows[0].state.as_str(), rows[0].attempt),
        ("succeeded", 1),
        "one attempt: never taken over"
    );
    assert_eq!(slow.calls.load(Ordering::SeqCst), 1, "rendered once");
}

conformance!(a_render_longer_than_three_leases_is_never_taken_over);
