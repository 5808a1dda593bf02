//! How many jobs a worker holds at once. Enough to keep every lane fed (a full batch
//! in each of its calls and one more waiting), and no more than its lanes can start
//! within a few seconds, so the other workers on the queue get the rest.
//! `--concurrency` stays the cap.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::sync::Notify;

/// Claims sized to what the lanes start within this long.
const HORIZON_SECS: f64 = 2.0;
/// A lane without a call for this long no longer counts (its model's jobs stopped).
const ACTIVE: Duration = Duration::from_secs(60);
/// Weight of the newest call in a lane's measured rate.
const SMOOTHING: f64 = 0.3;

/// What a lane did: its calls, and how much of the time it was busy.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneUse {
    /// The device, or the first model seen on a lane of its own.
    pub label: String,
    /// Calls it takes at once.
    pub slots: usize,
    /// Device calls finished.
    pub calls: u64,
    /// Jobs in them.
    pub jobs: u64,
    /// Call time summed over its slots, divided by them.
    pub busy: Duration,
    /// From its first call's start to its last call's end.
    pub span: Duration,
}

impl LaneUse {
    /// The share of its span the lane was busy, 0 to 1.
    pub fn duty(&self) -> f64 {
        if self.span.is_zero() {
            return 0.0;
        }
        (self.busy.as_secs_f64() / self.span.as_secs_f64()).min(1.0)
    }
}

struct Lane {
    label: String,
    slots: usize,
    /// Jobs per second one slot renders, smoothed over recent calls.
    rate: f64,
    calls: u64,
    jobs: u64,
    busy: Duration,
    first_start: Instant,
    last_end: Instant,
}

/// The worker's claim target, from each lane's measured calls.
pub struct ClaimSizer {
    cap: usize,
    max_batch: usize,
    /// Slots of the widest lane, before any call has been measured.
    widest: usize,
    lanes: Mutex<HashMap<String, Lane>>,
    /// Wakes intake: a call finished (the target may have grown) or a job let go.
    pub(crate) changed: Notify,
}

impl ClaimSizer {
    /// A sizer that never holds more than `cap` jobs, with batches of `max_batch`,
    /// for lanes the widest of which takes `widest` calls at once.
    pub fn new(cap: usize, max_batch: usize, widest: usize) -> Self {
        ClaimSizer {
            cap: cap.max(1),
            max_batch: max_batch.max(1),
            widest: widest.max(1),
            lanes: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        }
    }

    /// Records a finished device call on `lane` (which takes `slots` calls at once):
    /// `jobs` jobs, first handed to the renderer at `started`, which worked on them
    /// for `took`; ended now.
    pub fn call_finished(
        &self,
        lane: &str,
        label: &str,
        slots: usize,
        jobs: usize,
        started: Instant,
        took: Duration,
    ) {
        let now = Instant::now();
        // A call faster than a microsecond counts as one: the rate stays finite.
        let rate = jobs as f64 / took.as_secs_f64().max(1e-6);
        let mut lanes = self.lanes.lock().unwrap();
        let l = lanes.entry(lane.to_string()).or_insert_with(|| Lane {
            label: label.to_string(),
            slots: slots.max(1),
            rate,
            calls: 0,
            jobs: 0,
            busy: Duration::ZERO,
            first_start: started,
            last_end: now,
        });
        l.rate = SMOOTHING * rate + (1.0 - SMOOTHING) * l.rate;
        l.calls += 1;
        l.jobs += jobs as u64;
        l.busy += took / l.slots as u32;
        l.first_start = l.first_start.min(started);
        l.last_end = l.last_end.max(now);
        drop(lanes);
        self.changed.notify_one();
    }

    /// Jobs to hold now. Before any call has finished: two batches for each slot of
    /// the widest lane. Afterwards, summed over the lanes that rendered in the last
    /// minute: the larger of two batches per slot (one on the device, one ready) and
    /// what its slots render in the horizon at their measured speed.
    pub fn target(&self) -> usize {
        let lanes = self.lanes.lock().unwrap();
        let now = Instant::now();
        let mut need = 0.0;
        let mut active = false;
        for l in lanes.values() {
            if now.saturating_duration_since(l.last_end) > ACTIVE {
                continue;
            }
            active = true;
            let fed = l.slots.saturating_mul(2).saturating_mul(self.max_batch) as f64;
            let horizon = l.slots as f64 * l.rate * HORIZON_SECS;
            need += fed.max(horizon);
        }
        if !active {
            need = self.widest.saturating_mul(2).saturating_mul(self.max_batch) as f64;
        }
        (need.ceil() as usize).clamp(1, self.cap)
    }

    /// What each lane did so far, busiest first.
    pub fn lane_use(&self) -> Vec<LaneUse> {
        let lanes = self.lanes.lock().unwrap();
        let mut out: Vec<LaneUse> = lanes
            .values()
            .map(|l| LaneUse {
                label: l.label.clone(),
                slots: l.slots,
                calls: l.calls,
                jobs: l.jobs,
                busy: l.busy,
                span: l.last_end.saturating_duration_since(l.first_start),
            })
            .collect();
        out.sort_by(|a, b| b.busy.cmp(&a.busy).then(a.label.cmp(&b.label)));
        out
    }
}

/// A concurrency permit that wakes intake when let go: the job it held is done.
pub(crate) struct Held {
    _permit: tokio::sync::OwnedSemaphorePermit,
    sizer: std::sync::Arc<ClaimSizer>,
}

impl Held {
    pub(crate) fn new(
        permit: tokio::sync::OwnedSemaphorePermit,
        sizer: std::sync::Arc<ClaimSizer>,
    ) -> Self {
        Held {
            _permit: permit,
            sizer,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.sizer.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ago(ms: u64) -> Instant {
        Instant::now() - Duration::from_millis(ms)
    }

    #[test]
    fn before_any_call_it_holds_two_batches_per_slot_of_the_widest_lane() {
        assert_eq!(ClaimSizer::new(256, 4, 1).target(), 8);
        assert_eq!(
            ClaimSizer::new(256, 4, 16).target(),
            128,
            "an endpoint's 16 calls"
        );
        assert_eq!(ClaimSizer::new(5, 4, 1).target(), 5, "the cap wins");
    }

    #[test]
    fn a_slow_lane_holds_what_it_starts_in_the_horizon_and_no_more() {
        // 700 ms per call of 4: about 5.7 jobs/s, 11.4 in two seconds.
        let s = ClaimSizer::new(256, 4, 1);
        s.call_finished(
            "cpu",
            "sd-turbo",
            1,
            4,
            ago(700),
            Duration::from_millis(700),
        );
        let t = s.target();
        assert!((11..=13).contains(&t), "{t}");
    }

    #[test]
    fn a_very_slow_lane_still_keeps_a_batch_waiting() {
        let s = ClaimSizer::new(256, 8, 1);
        s.call_finished("cuda:0", "sdxl", 1, 8, ago(30_000), Duration::from_secs(30));
        assert_eq!(s.target(), 16);
    }

    #[test]
    fn a_fast_lane_reaches_the_cap_and_lanes_add_up() {
        let s = ClaimSizer::new(1000, 8, 1);
        s.call_finished("noop", "noop", 1, 8, ago(0), Duration::from_millis(0));
        assert_eq!(s.target(), 1000);
        let s = ClaimSizer::new(1000, 4, 1);
        s.call_finished("a", "a", 1, 4, ago(30_000), Duration::from_secs(30));
        s.call_finished("b", "b", 2, 4, ago(30_000), Duration::from_secs(30));
        assert_eq!(s.target(), 8 + 16, "two batches per slot of each lane");
    }

    #[test]
    fn lane_use_is_busy_time_over_span_per_slot() {
        let s = ClaimSizer::new(64, 4, 1);
        let start = ago(400);
        s.call_finished("r", "remote/x", 2, 4, start, Duration::from_millis(400));
        s.call_finished("r", "remote/x", 2, 4, start, Duration::from_millis(400));
        let u = &s.lane_use()[0];
        assert_eq!(
            (u.label.as_str(), u.slots, u.calls, u.jobs),
            ("remote/x", 2, 2, 8)
        );
        // Two 400 ms calls side by side on two slots: busy the whole span.
        assert!(u.duty() > 0.95, "{u:?}");
    }
}
