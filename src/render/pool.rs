//! One model on several devices (`--device cuda:0,cuda:1`): a call goes to whichever
//! device is free first. A device takes one call at a time across every model on it
//! (one turn per device in the process), so models sharing GPUs never meet on one.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

use async_trait::async_trait;
use image::RgbImage;
use tokio::sync::Semaphore;

use super::{RenderError, RenderRequest, Renderer};

/// The turn of `device`: one call at a time on it, whichever model makes it.
fn turn(device: &str) -> Arc<Semaphore> {
    static TURNS: OnceLock<Mutex<HashMap<String, Arc<Semaphore>>>> = OnceLock::new();
    let mut turns = TURNS.get_or_init(Mutex::default).lock().unwrap();
    turns
        .entry(device.to_string())
        .or_insert_with(|| Arc::new(Semaphore::new(1)))
        .clone()
}

/// The same model on several devices, one renderer per device.
pub struct DevicePool {
    members: Vec<Arc<dyn Renderer>>,
    turns: Vec<Arc<Semaphore>>,
    key: String,
}

impl DevicePool {
    /// A pool of `members`, each on a device of its own (`Renderer::device`); a device
    /// named twice is refused.
    pub fn new(members: Vec<Arc<dyn Renderer>>) -> Result<Self, String> {
        let devices: Vec<String> = members
            .iter()
            .map(|m| m.device().unwrap_or_default())
            .collect();
        for (i, d) in devices.iter().enumerate() {
            if devices[..i].contains(d) {
                return Err(format!("device {d} is named twice"));
            }
        }
        Ok(DevicePool {
            turns: devices.iter().map(|d| turn(d)).collect(),
            key: devices.join(","),
            members,
        })
    }
}

#[async_trait]
impl Renderer for DevicePool {
    async fn render(&self, batch: &[RenderRequest]) -> Vec<Result<RgbImage, RenderError>> {
        // The first device whose turn comes; the other waits are dropped unserved.
        let waits = self
            .turns
            .iter()
            .map(|t| Box::pin(t.clone().acquire_owned()));
        let (permit, chosen, _) = futures::future::select_all(waits).await;
        let _turn = permit.expect("a device's turn is never closed");
        self.members[chosen].render(batch).await
    }

    async fn prepare(&self) -> Result<(), RenderError> {
        for member in &self.members {
            member.prepare().await?;
        }
        Ok(())
    }

    fn lanes(&self) -> usize {
        self.members.len()
    }

    fn device(&self) -> Option<String> {
        Some(self.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;
    use crate::job::JobId;

    /// A device that takes 50 ms a call and counts its calls in flight.
    struct Fake {
        device: String,
        now: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
        calls: AtomicUsize,
    }

    impl Fake {
        fn on(device: &str) -> Arc<Fake> {
            Arc::new(Fake {
                device: device.into(),
                now: Arc::default(),
                most: Arc::default(),
                calls: AtomicUsize::new(0),
            })
        }

        /// Another model on the same device: the device's counters are shared.
        fn beside(other: &Fake) -> Arc<Fake> {
            Arc::new(Fake {
                device: other.device.clone(),
                now: other.now.clone(),
                most: other.most.clone(),
                calls: AtomicUsize::new(0),
            })
        }
    }

    #[async_trait]
    impl Renderer for Fake {
        async fn render(&self, batch: &[RenderRequest]) -> Vec<Result<RgbImage, RenderError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            batch.iter().map(|_| Ok(RgbImage::new(1, 1))).collect()
        }
        fn device(&self) -> Option<String> {
            Some(self.device.clone())
        }
    }

    fn request() -> RenderRequest {
        RenderRequest {
            job_id: JobId::generate(),
            model: "m".into(),
            prompt: "p".into(),
            negative_prompt: None,
            width: 8,
            height: 8,
            steps: None,
            guidance: None,
            sampler: Default::default(),
            seed: 1,
        }
    }

    #[tokio::test]
    async fn calls_spread_over_free_devices_and_models_never_meet_on_one() {
        let gpus = [Fake::on("test-gpu-0"), Fake::on("test-gpu-1")];
        let second = [Fake::beside(&gpus[0]), Fake::beside(&gpus[1])];
        let members = |f: &[Arc<Fake>; 2]| -> Vec<Arc<dyn Renderer>> {
            f.iter().map(|g| g.clone() as Arc<dyn Renderer>).collect()
        };
        let model_a = DevicePool::new(members(&gpus)).unwrap();
        let model_b = DevicePool::new(members(&second)).unwrap();
        assert_eq!(model_a.lanes(), 2);
        assert_eq!(
            model_a.device(),
            model_b.device(),
            "the same devices, one lane set"
        );
        // Four calls at once, two per model, over two devices.
        let batch = [request()];
        let calls = [&model_a, &model_a, &model_b, &model_b].map(|p| p.render(&batch));
        let results = futures::future::join_all(calls).await;
        assert!(results.iter().all(|r| r.len() == 1 && r[0].is_ok()));
        // Both devices were used, and no device ran two calls at once, whichever
        // model made them.
        for device in 0..2 {
            let calls = gpus[device].calls.load(Ordering::SeqCst)
                + second[device].calls.load(Ordering::SeqCst);
            assert_eq!(calls, 2, "device {device} took two of the four calls");
        }
        for gpu in &gpus {
            assert_eq!(
                gpu.most.load(Ordering::SeqCst),
                1,
                "one call at a time on a device"
            );
        }
        assert!(DevicePool::new(vec![gpus[0].clone(), second[0].clone()]).is_err());
    }
}
