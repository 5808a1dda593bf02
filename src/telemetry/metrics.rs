//! The process's Prometheus metrics, named by Prometheus's rules: base units
//! (seconds), `_total` on counters, and labels of small fixed sets (queue, model,
//! outcome, kind, state), never a job id or a prompt.

use std::sync::{OnceLock, atomic::AtomicU64};

use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Every metric renderq exports. One per process ([`metrics`]): the renderers, the
/// worker and the scheduler count into it wherever they are.
pub struct Metrics {
    registry: Registry,
    claimed: Family<Labels, Counter>,
    finished: Family<Labels, Counter>,
    claim_wait: Histograms,
    device_call: Histograms,
    device_jobs: Histograms,
    device_busy: Family<Labels, Counter<f64, AtomicU64>>,
    stages: Histograms,
    encode: Histogram,
    upload: Histogram,
    in_flight: Family<Labels, Gauge>,
    claim_target: Family<Labels, Gauge>,
    oom_splits: Counter,
    webhooks: Family<Labels, Counter>,
    repairs: Family<Labels, Counter>,
    backlog: Family<Labels, Gauge>,
    firings: Family<Labels, Counter>,
}

/// Durations from a millisecond to about nine minutes.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// Jobs per device call: 1, 2, 4 … 1024 (the largest `--max-batch`).
fn jobs() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn l(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("renderq");
        let m = Metrics {
            claimed: Family::default(),
            finished: Family::default(),
            claim_wait: Family::new_with_constructor(seconds),
            device_call: Family::new_with_constructor(seconds),
            device_jobs: Family::new_with_constructor(jobs),
            device_busy: Family::default(),
            stages: Family::new_with_constructor(seconds),
            encode: seconds(),
            upload: seconds(),
            in_flight: Family::default(),
            claim_target: Family::default(),
            oom_splits: Counter::default(),
            webhooks: Family::default(),
            repairs: Family::default(),
            backlog: Family::default(),
            firings: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "jobs_claimed",
            "Jobs claimed, by queue and model",
            m.claimed.clone(),
        );
        r.register(
            "jobs_finished",
            "Attempts ended, by queue, model and outcome (succeeded, failed, retried, \
             cancelled, stale)",
            m.finished.clone(),
        );
        r.register(
            "claim_wait_seconds",
            "Time from submit to a job's first claim, by queue",
            m.claim_wait.clone(),
        );
        r.register(
            "device_call_seconds",
            "Duration of one device call (a batch), by model",
            m.device_call.clone(),
        );
        r.register(
            "device_call_jobs",
            "Jobs rendered in one device call, by model",
            m.device_jobs.clone(),
        );
        r.register(
            "device_busy_seconds",
            "Time the device spent in calls, by model; its rate is the duty cycle",
            m.device_busy.clone(),
        );
        r.register(
            "diffusion_stage_seconds",
            "Time of one diffusion device call's stage (text, unet, decode), by model",
            m.stages.clone(),
        );
        r.register(
            "encode_seconds",
            "Time to encode one image",
            m.encode.clone(),
        );
        r.register(
            "upload_seconds",
            "Time of one upload call to the store (up to 64 images)",
            m.upload.clone(),
        );
        r.register(
            "jobs_in_flight",
            "Jobs claimed and not yet recorded, by queue",
            m.in_flight.clone(),
        );
        r.register(
            "claim_target",
            "Jobs a worker aims to hold, from its lanes' measured calls (at most \
             --concurrency), by queue",
            m.claim_target.clone(),
        );
        r.register(
            "oom_splits",
            "Batches split in two after the device ran out of memory",
            m.oom_splits.clone(),
        );
        r.register(
            "webhook_deliveries",
            "Batch webhook deliveries by outcome (delivered, failed)",
            m.webhooks.clone(),
        );
        r.register(
            "reconciler_repairs",
            "Jobs the reconciler repaired, by queue and kind (redispatched, \
             rescheduled, rescued, failed)",
            m.repairs.clone(),
        );
        r.register(
            "queue_jobs",
            "Unfinished jobs in the record by queue and state, as the reconciler's \
             leader last read them",
            m.backlog.clone(),
        );
        r.register(
            "schedule_firings",
            "Schedule firings by outcome (fired, failed, missed while no scheduler ran)",
            m.firings.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition (OpenMetrics) of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// `n` jobs of `model` claimed from `queue`.
    pub fn claimed(&self, queue: &str, model: &str, n: u64) {
        let labels = l(&[("queue", queue), ("model", model)]);
        self.claimed.get_or_create(&labels).inc_by(n);
    }

    /// `n` attempts of `model` ended with `outcome`.
    pub fn finished(&self, queue: &str, model: &str, outcome: &str, n: u64) {
        let labels = l(&[("queue", queue), ("model", model), ("outcome", outcome)]);
        self.finished.get_or_create(&labels).inc_by(n);
    }

    /// A job first claimed `secs` after it was submitted.
    pub fn claim_wait(&self, queue: &str, secs: f64) {
        let labels = l(&[("queue", queue)]);
        self.claim_wait.get_or_create(&labels).observe(secs);
    }

    /// One device call of `jobs` jobs that took `secs`.
    pub fn device_call(&self, model: &str, jobs: usize, secs: f64) {
        let labels = l(&[("model", model)]);
        self.device_call.get_or_create(&labels).observe(secs);
        self.device_jobs.get_or_create(&labels).observe(jobs as f64);
        self.device_busy.get_or_create(&labels).inc_by(secs);
    }

    /// A diffusion call spent `secs` in `stage` (`text`, `unet` or `decode`).
    pub fn diffusion_stage(&self, model: &str, stage: &str, secs: f64) {
        let labels = l(&[("model", model), ("stage", stage)]);
        self.stages.get_or_create(&labels).observe(secs);
    }

    /// One image encoded in `secs`.
    pub fn encoded(&self, secs: f64) {
        self.encode.observe(secs);
    }

    /// One upload call that took `secs`.
    pub fn uploaded(&self, secs: f64) {
        self.upload.observe(secs);
    }

    /// `n` jobs of `queue` are in flight.
    pub fn in_flight(&self, queue: &str, n: usize) {
        let labels = l(&[("queue", queue)]);
        self.in_flight.get_or_create(&labels).set(n as i64);
    }

    /// A worker on `queue` aims to hold `n` jobs.
    pub fn claim_target(&self, queue: &str, n: usize) {
        let labels = l(&[("queue", queue)]);
        self.claim_target.get_or_create(&labels).set(n as i64);
    }

    /// A batch split after the device ran out of memory.
    pub fn oom_split(&self) {
        self.oom_splits.inc();
    }

    /// A webhook delivery ended with `outcome`.
    pub fn webhook(&self, outcome: &str) {
        self.webhooks
            .get_or_create(&l(&[("outcome", outcome)]))
            .inc();
    }

    /// The reconciler repaired `n` jobs of `queue` by `kind`.
    pub fn repaired(&self, queue: &str, kind: &str, n: usize) {
        let labels = l(&[("queue", queue), ("kind", kind)]);
        self.repairs.get_or_create(&labels).inc_by(n as u64);
    }

    /// The record holds `n` jobs of `queue` in `state`.
    pub fn backlog(&self, queue: &str, state: &str, n: i64) {
        let labels = l(&[("queue", queue), ("state", state)]);
        self.backlog.get_or_create(&labels).set(n);
    }

    /// `n` firings of schedules ended with `outcome`.
    pub fn fired(&self, outcome: &str, n: u64) {
        self.firings
            .get_or_create(&l(&[("outcome", outcome)]))
            .inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_follows_prometheus_naming() {
        let m = Metrics::new();
        m.claimed("default", "noop", 3);
        m.device_call("noop", 2, 0.5);
        m.device_call("noop", 1, 0.25);
        let text = m.render();
        assert!(
            text.contains(r#"renderq_jobs_claimed_total{queue="default",model="noop"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"renderq_device_busy_seconds_total{model="noop"} 0.75"#),
            "{text}"
        );
        assert!(text.contains(r#"renderq_device_call_seconds_count{model="noop"} 2"#));
        assert!(text.contains("# TYPE renderq_device_call_seconds histogram"));
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
