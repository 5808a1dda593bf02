//! Liveness and readiness. A loop is live while it ticks: each one ticks when it
//! makes progress and says when it is idle (waiting for work is not being stuck). A
//! loop busy without a tick for longer than the stall bound is stuck, and `/livez`
//! answers 503 naming it. Readiness asks every probe (record, dispatch, store, each
//! model) at the time of the request, and is refused while the process drains.

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;

/// One loop's pulse: when it last made progress, and whether it is idle.
#[derive(Debug)]
pub struct Beat {
    name: String,
    epoch: Instant,
    /// Milliseconds after `epoch` of the last tick.
    last: AtomicU64,
    idle: AtomicBool,
}

impl Beat {
    /// Progress: the loop is working and not stuck.
    pub fn tick(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.idle.store(false, Ordering::Relaxed);
    }

    /// The loop waits for work (or sleeps until its next round): not measured.
    pub fn idle(&self) {
        self.idle.store(true, Ordering::Relaxed);
    }

    /// How long it has been busy without a tick; `None` while idle.
    fn busy_for(&self) -> Option<Duration> {
        if self.idle.load(Ordering::Relaxed) {
            return None;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        Some(Duration::from_millis(
            now.saturating_sub(self.last.load(Ordering::Relaxed)),
        ))
    }
}

tokio::task_local! {
    static CURRENT: Arc<Beat>;
}

/// Runs `fut` as the loop `beat`: code deep inside it (a database retry, an upload
/// retry) ticks through [`tick_current`] without being handed the beat.
pub async fn watched<F: Future>(beat: Arc<Beat>, fut: F) -> F::Output {
    CURRENT.scope(beat, fut).await
}

/// Ticks the loop this task runs as, if any: a retry is progress, so a loop waiting
/// out a database restart is not reported stuck.
pub fn tick_current() {
    let _ = CURRENT.try_with(|b| b.tick());
}

/// Marks the loop this task runs as idle (waiting for its next round), if any.
pub fn idle_current() {
    let _ = CURRENT.try_with(|b| b.idle());
}

/// A readiness probe's answer: `Err` says what is wrong, in words safe to show.
pub type ProbeResult = Result<(), String>;

/// A readiness probe: asked on every `/readyz`, within a timeout.
pub type Probe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ProbeResult> + Send>> + Send + Sync>;

/// A process's health: its loops, its readiness probes, and whether it drains.
pub struct Health {
    epoch: Instant,
    stall: Duration,
    loops: Mutex<Vec<Arc<Beat>>>,
    probes: Mutex<BTreeMap<String, Probe>>,
    draining: AtomicBool,
}

/// How long one probe may take before it counts as not answering.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `/livez`'s and `/readyz`'s JSON body.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `ok`, `stalled`, `ready`, `not ready` or `draining`.
    pub status: &'static str,
    /// What is wrong, by loop or probe name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub problems: BTreeMap<String, String>,
}

impl Health {
    /// A health with no loops and no probes; a loop busy longer than `stall` without
    /// progress is stuck.
    pub fn new(stall: Duration) -> Arc<Self> {
        Arc::new(Health {
            epoch: Instant::now(),
            stall,
            loops: Mutex::default(),
            probes: Mutex::default(),
            draining: AtomicBool::new(false),
        })
    }

    /// A new loop to watch, idle until it first ticks.
    pub fn watch(&self, name: &str) -> Arc<Beat> {
        let beat = Arc::new(Beat {
            name: name.to_string(),
            epoch: self.epoch,
            last: AtomicU64::new(0),
            idle: AtomicBool::new(true),
        });
        self.loops.lock().unwrap().push(beat.clone());
        beat
    }

    /// Adds (or replaces) the readiness probe `name`.
    pub fn probe(&self, name: &str, probe: Probe) {
        self.probes.lock().unwrap().insert(name.to_string(), probe);
    }

    /// From now on the process drains: not ready, whatever the probes say.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether every loop makes progress.
    pub fn liveness(&self) -> (bool, Report) {
        let mut problems = BTreeMap::new();
        for beat in self.loops.lock().unwrap().iter() {
            if let Some(busy) = beat.busy_for().filter(|b| *b > self.stall) {
                problems.insert(
                    beat.name.clone(),
                    format!(
                        "no progress for {:.1} s (the bound is {:.1} s)",
                        busy.as_secs_f64(),
                        self.stall.as_secs_f64()
                    ),
                );
            }
        }
        let ok = problems.is_empty();
        let status = if ok { "ok" } else { "stalled" };
        (ok, Report { status, problems })
    }

    /// Whether every probe answers and the process is not draining.
    pub async fn readiness(&self) -> (bool, Report) {
        if self.draining.load(Ordering::Relaxed) {
            let problems = BTreeMap::from([(
                "process".to_string(),
                "draining after a stop signal".to_string(),
            )]);
            return (
                false,
                Report {
                    status: "draining",
                    problems,
                },
            );
        }
        let probes: Vec<(String, Probe)> = self
            .probes
            .lock()
            .unwrap()
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect();
        let answers =
            futures::future::join_all(probes.into_iter().map(|(name, probe)| async move {
                let answer = match tokio::time::timeout(PROBE_TIMEOUT, probe()).await {
                    Ok(a) => a,
                    Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
                };
                (name, answer)
            }))
            .await;
        let problems: BTreeMap<String, String> = answers
            .into_iter()
            .filter_map(|(name, a)| a.err().map(|e| (name, e)))
            .collect();
        let ok = problems.is_empty();
        let status = if ok { "ready" } else { "not ready" };
        (ok, Report { status, problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_loop_without_progress_is_stuck_and_an_idle_one_is_not() {
        let health = Health::new(Duration::from_millis(50));
        let render = health.watch("render");
        let intake = health.watch("intake");
        render.tick();
        intake.tick();
        intake.idle();
        assert!(health.liveness().0);
        tokio::time::sleep(Duration::from_millis(80)).await;
        let (live, report) = health.liveness();
        assert!(!live);
        assert_eq!(report.problems.keys().collect::<Vec<_>>(), ["render"]);
        watched(render.clone(), async { tick_current() }).await;
        assert!(
            health.liveness().0,
            "a tick through the task makes it live again"
        );
    }

    #[tokio::test]
    async fn readiness_names_what_fails_and_draining_wins() {
        let health = Health::new(Duration::from_secs(1));
        health.probe("record", Arc::new(|| Box::pin(async { Ok(()) })));
        health.probe(
            "store",
            Arc::new(|| Box::pin(async { Err("bucket missing".to_string()) })),
        );
        let (ready, report) = health.readiness().await;
        assert!(!ready);
        assert_eq!(report.problems["store"], "bucket missing");
        assert!(!report.problems.contains_key("record"));
        health.probe("store", Arc::new(|| Box::pin(async { Ok(()) })));
        assert!(health.readiness().await.0);
        health.drain();
        let (ready, report) = health.readiness().await;
        assert!(!ready);
        assert_eq!(report.status, "draining");
    }
}
