//! The render stage: claimed jobs grouped by what can share a device call, each
//! call run with its panics contained.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use image::RgbImage;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::{InFlight, Shared};
use crate::telemetry::{idle_current, metrics, tick_current};
use crate::{
    job::JobState,
    render::{BatchKey, RenderError, RenderRequest},
};

/// A rendered job: its image, or why there is none.
pub(crate) type Rendered = (InFlight, Result<RgbImage, RenderError>);

/// One device call in flight: its lane, its jobs, and then their results.
type Call = Pin<Box<dyn Future<Output = Finished> + Send>>;

/// A finished call: its lane, its jobs, their results, and the device's time on them.
type Finished = (
    LaneCall,
    Vec<InFlight>,
    Vec<RenderResult>,
    Option<DeviceTime>,
);

/// Which lane a call ran on.
struct LaneCall {
    lane: String,
    label: String,
    slots: usize,
}

/// What a call's task needs of each job (the jobs themselves stay with the stage).
struct CallJob {
    request: RenderRequest,
    id: crate::job::JobId,
    attempt: i32,
    claimed_at: tokio::time::Instant,
}

/// When the renderer was first called and how long its calls took: the device's busy
/// time, without the checks and bookkeeping around it.
#[derive(Clone, Copy)]
struct DeviceTime {
    started: std::time::Instant,
    took: Duration,
}
type RenderResult = Result<RgbImage, RenderError>;

/// Renders claimed jobs, grouping those that can share a device call. Each renderer
/// is a lane taking `lanes()` calls at once (one for a GPU, the permits of an
/// endpoint): a call starts as soon as its lane has room, and a slow lane never holds
/// up another. Jobs that wait for a busy lane are grouped when it frees, so batches
/// fill while the device works.
pub(crate) async fn render(
    s: Arc<Shared>,
    mut rx: mpsc::Receiver<InFlight>,
    tx: mpsc::Sender<Rendered>,
) {
    let mut waiting: Vec<InFlight> = Vec::new();
    let mut calls: FuturesUnordered<Call> = FuturesUnordered::new();
    let mut busy: HashMap<String, Lane> = HashMap::new();
    let mut open = true;
    loop {
        start_calls(&s, &mut waiting, &mut calls, &mut busy);
        if calls.is_empty() {
            if !open {
                break;
            }
            idle_current();
        }
        tokio::select! {
            item = rx.recv(), if open => match item {
                Some(first) => {
                    waiting.push(first);
                    while waiting.len() < s.cfg.concurrency {
                        match rx.try_recv() {
                            Ok(more) => waiting.push(more),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            Some((call, group, results, device)) = calls.next() => {
                tick_current();
                if let Some(lane) = busy.get_mut(&call.lane) {
                    lane.calls = lane.calls.saturating_sub(1);
                }
                // An unknown model's "call" fails at once: it is no lane.
                if let (false, Some(d)) = (call.lane.is_empty(), device) {
                    s.sizer.call_finished(&call.lane, &call.label, call.slots, group.len(), d.started, d.took);
                }
                // The lane's next call starts before these results move on.
                start_calls(&s, &mut waiting, &mut calls, &mut busy);
                for (item, result) in group.into_iter().zip(results) {
                    if tx.send((item, result)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// A lane: its calls started (on the device or queued for it), and the queue its
/// slot tasks take them from. Each slot task runs one call at a time, so a device
/// never runs more than its slots; a call queued behind it starts the moment the
/// device is free, in the same task, with no round trip through this stage.
struct Lane {
    calls: usize,
    queue: mpsc::UnboundedSender<Work>,
}

/// One call for a lane's slot task, and where its results go.
struct Work {
    model: String,
    jobs: Vec<CallJob>,
    done: oneshot::Sender<(Vec<RenderResult>, Option<DeviceTime>)>,
}

/// Calls a lane takes per slot: one on the device, one formed and queued.
const STAGED: usize = 2;

/// Slot tasks of one lane at most: as many as `--remote-concurrency` allows, so an
/// endpoint keeps every request in flight even with one job per call. Only a renderer
/// that claims more lanes than that (none built in) would have calls wait for a task.
const MAX_SLOT_TASKS: usize = 1024;

fn open_lane(s: &Arc<Shared>, slots: usize) -> Lane {
    let (tx, rx) = mpsc::unbounded_channel::<Work>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    for _ in 0..slots.clamp(1, MAX_SLOT_TASKS) {
        let (s, rx) = (s.clone(), rx.clone());
        tokio::spawn(async move {
            loop {
                // The lock is held only by a slot task waiting for work.
                let next = rx.lock().await.recv().await;
                let Some(work) = next else { return };
                let out = render_group(&s, &work.model, work.jobs).await;
                let _ = work.done.send(out);
            }
        });
    }
    Lane {
        calls: 0,
        queue: tx,
    }
}

/// A lane's room while calls are being formed.
struct Room {
    call: LaneCall,
    /// Calls it can still start.
    free: usize,
    /// Its groups still filling.
    filling: usize,
}

/// The lane `model`'s calls run on: a device its renderers share, or a renderer of
/// its own (every `remote/<name>` shares the endpoint's).
fn lane_of(s: &Shared, model: &str) -> LaneCall {
    match s.renderers.get(model) {
        Some(r) => match r.device() {
            Some(device) => LaneCall {
                lane: device.clone(),
                label: device,
                slots: r.lanes(),
            },
            None => LaneCall {
                lane: format!("renderer {:p}", Arc::as_ptr(&r) as *const ()),
                label: model.to_string(),
                slots: r.lanes(),
            },
        },
        // Fails at once: never waits.
        None => LaneCall {
            lane: String::new(),
            label: String::new(),
            slots: usize::MAX,
        },
    }
}

/// Groups the waiting jobs by what can share a device call (up to `--max-batch`)
/// and starts the groups their lanes have room for; the rest keep waiting, in order.
/// One pass, and a job whose lane is full costs one lookup: this runs at every turn
/// of the stage, with hundreds of jobs waiting.
fn start_calls(
    s: &Arc<Shared>,
    waiting: &mut Vec<InFlight>,
    calls: &mut FuturesUnordered<Call>,
    busy: &mut HashMap<String, Lane>,
) {
    if waiting.is_empty() {
        return;
    }
    let max_batch = s.cfg.max_batch.max(1);
    let mut rooms: Vec<Room> = Vec::new();
    let mut room_of_model: HashMap<String, usize> = HashMap::new();
    let mut groups: Vec<(BatchKey, usize, Vec<InFlight>)> = Vec::new();
    let mut filling: HashMap<BatchKey, usize> = HashMap::new();
    let mut rest = Vec::new();
    for item in waiting.drain(..) {
        let model = item.job.spec.model.as_str();
        let r = match room_of_model.get(model) {
            Some(&r) => r,
            None => {
                let call = lane_of(s, model);
                let r = match rooms.iter().position(|room| room.call.lane == call.lane) {
                    Some(r) => r,
                    None => {
                        let used = busy.get(&call.lane).map_or(0, |l| l.calls);
                        rooms.push(Room {
                            free: call.slots.saturating_mul(STAGED).saturating_sub(used),
                            filling: 0,
                            call,
                        });
                        rooms.len() - 1
                    }
                };
                room_of_model.insert(model.to_string(), r);
                r
            }
        };
        if rooms[r].free == 0 && rooms[r].filling == 0 {
            rest.push(item);
            continue;
        }
        let key = BatchKey::of(&item.job);
        if let Some(&g) = filling.get(&key) {
            groups[g].2.push(item);
            if groups[g].2.len() >= max_batch {
                filling.remove(&key);
                rooms[r].filling -= 1;
            }
            continue;
        }
        if rooms[r].free == 0 {
            rest.push(item);
            continue;
        }
        rooms[r].free -= 1;
        groups.push((key.clone(), r, vec![item]));
        if max_batch > 1 {
            rooms[r].filling += 1;
            filling.insert(key, groups.len() - 1);
        }
    }
    *waiting = rest;
    for (key, r, group) in groups {
        let call = LaneCall {
            lane: rooms[r].call.lane.clone(),
            label: rooms[r].call.label.clone(),
            slots: rooms[r].call.slots,
        };
        tick_current();
        let jobs: Vec<CallJob> = group
            .iter()
            .map(|i| CallJob {
                request: RenderRequest::from_job(&i.job),
                id: i.job.id,
                attempt: i.job.attempt,
                claimed_at: i.claimed_at,
            })
            .collect();
        let model = key.model;
        if call.lane.is_empty() {
            // An unserved model fails at once; it has no lane to wait for.
            let results = render_group_unserved(s, &model, jobs.len());
            calls.push(Box::pin(async move { (call, group, results, None) }));
            continue;
        }
        let lane = busy
            .entry(call.lane.clone())
            .or_insert_with(|| open_lane(s, call.slots));
        lane.calls += 1;
        let (done, result) = oneshot::channel();
        let sent = lane.queue.send(Work { model, jobs, done });
        calls.push(Box::pin(async move {
            let (results, device) = match (sent, result.await) {
                (Ok(()), Ok(done)) => done,
                _ => {
                    let e = RenderError::Retry("the render stage is shutting down".into());
                    (group.iter().map(|_| Err(e.clone())).collect(), None)
                }
            };
            (call, group, results, device)
        }));
    }
}

fn render_group_unserved(s: &Shared, model: &str, n: usize) -> Vec<RenderResult> {
    let err = s.renderers.unknown_model(model);
    (0..n).map(|_| Err(err.clone())).collect()
}

/// One device call. A panic is contained: a batch that panics is rendered again one
/// job at a time, so only the job that causes it fails.
async fn render_group(
    s: &Shared,
    model: &str,
    jobs: Vec<CallJob>,
) -> (Vec<RenderResult>, Option<DeviceTime>) {
    let Some(renderer) = s.renderers.get(model) else {
        return (render_group_unserved(s, model, jobs.len()), None);
    };
    // Jobs cancelled (or taken over) while they waited for the device are not
    // rendered: their device time goes to live jobs. Only a long wait is worth the
    // query; a fresher job's outcome is still fenced out if cancelled.
    let waited = jobs.iter().any(|j| j.claimed_at.elapsed() >= RECHECK_AFTER);
    let live = if waited {
        still_ours(s, &jobs).await
    } else {
        vec![true; jobs.len()]
    };
    let all_live = live.iter().all(|l| *l);
    let requests: Vec<RenderRequest> = jobs
        .into_iter()
        .zip(&live)
        .filter(|(_, live)| **live)
        .map(|(j, _)| j.request)
        .collect();
    let (rendered, device) = render_requests(renderer, requests, model).await;
    if all_live {
        return (rendered, device);
    }
    let mut rendered = rendered.into_iter();
    let results = live
        .iter()
        .map(|live| match live {
            true => rendered
                .next()
                .unwrap_or_else(|| Err(RenderError::Retry("missing result".into()))),
            false => Err(RenderError::Abort("cancelled before rendering".into())),
        })
        .collect();
    (results, device)
}

/// A job that waited this long since its claim is checked before it renders: longer
/// than the claim sizing's horizon, so a lane it keeps fed pays no query per call,
/// while jobs queued behind a slow device are checked.
const RECHECK_AFTER: Duration = Duration::from_secs(5);

/// Whether each job is still running under the attempt this worker claimed.
/// On a database error all are assumed live (the completion fence still holds).
async fn still_ours(s: &Shared, jobs: &[CallJob]) -> Vec<bool> {
    let ids: Vec<_> = jobs.iter().map(|j| j.id).collect();
    match s.record.states(&ids).await {
        Ok(states) => jobs
            .iter()
            .map(|j| {
                states.iter().any(|(id, st, attempt)| {
                    *id == j.id && *st == JobState::Running && *attempt == j.attempt
                })
            })
            .collect(),
        Err(_) => vec![true; jobs.len()],
    }
}

/// Renders one device call. A panic, or a result count that does not match the
/// requests, renders the batch again one job at a time: only the job that causes it
/// fails, and the rest of the batch succeeds.
async fn render_requests(
    renderer: std::sync::Arc<dyn crate::render::Renderer>,
    requests: Vec<RenderRequest>,
    model: &str,
) -> (Vec<RenderResult>, Option<DeviceTime>) {
    if requests.is_empty() {
        return (Vec::new(), None);
    }
    let mut device: Option<DeviceTime> = None;
    let mut call = async |reqs: Vec<RenderRequest>| {
        let n = reqs.len();
        let started = std::time::Instant::now();
        // A panic is caught here and ends this call only, in this task: no hop to
        // another task between one call and the next.
        let rendered = std::panic::AssertUnwindSafe(renderer.render(&reqs))
            .catch_unwind()
            .await;
        let took = started.elapsed();
        let d = device.get_or_insert(DeviceTime {
            started,
            took: Duration::ZERO,
        });
        d.took += took;
        metrics().device_call(model, n, took.as_secs_f64());
        match rendered {
            Ok(out) if out.len() == n => Ok(out),
            Ok(out) => Err(format!(
                "renderer returned {} images for {n} requests",
                out.len()
            )),
            Err(panic) => Err(panic_message(panic)),
        }
    };
    let results = match call(requests.clone()).await {
        Ok(results) => results,
        Err(e) if requests.len() > 1 => {
            warn!(
                model,
                "{e} on a batch of {}; rendering it one job at a time",
                requests.len()
            );
            let mut out = Vec::with_capacity(requests.len());
            for req in requests {
                out.push(match call(vec![req]).await {
                    Ok(mut r) => r.remove(0),
                    Err(e) => Err(RenderError::Retry(e)),
                });
            }
            out
        }
        Err(e) => vec![Err(RenderError::Retry(e))],
    };
    (results, device)
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("renderer panicked: {msg}")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::*;
    use crate::{
        job::JobId,
        render::{NoopRenderer, PanicOn, PlaceholderRenderer, Renderer},
    };

    fn request(prompt: &str) -> RenderRequest {
        RenderRequest {
            job_id: JobId::generate(),
            model: "m".into(),
            prompt: prompt.into(),
            negative_prompt: None,
            width: 16,
            height: 16,
            steps: None,
            guidance: None,
            sampler: Default::default(),
            seed: 7,
        }
    }

    fn batch() -> Vec<RenderRequest> {
        ["a", "POISON", "b"].map(request).to_vec()
    }

    #[tokio::test]
    async fn a_panic_in_a_built_in_renderer_fails_only_the_poison_job() {
        let poison = || PanicOn::new(Some("POISON".into()));
        let renderers: [Arc<dyn Renderer>; 2] = [
            Arc::new(PlaceholderRenderer::new().panicking_on(poison())),
            Arc::new(NoopRenderer::new(0).panicking_on(poison())),
        ];
        for renderer in renderers {
            let (results, _) = render_requests(renderer, batch(), "m").await;
            assert_eq!(results.len(), 3);
            assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
            match &results[1] {
                Err(RenderError::Retry(e)) => {
                    assert!(e.contains("renderer panicked: poison prompt"), "{e}")
                }
                other => panic!("expected a retryable panic error, got {other:?}"),
            }
        }
    }

    /// Returns one image, whatever the batch size.
    struct OneImage;
    #[async_trait]
    impl Renderer for OneImage {
        async fn render(&self, _: &[RenderRequest]) -> Vec<Result<RgbImage, RenderError>> {
            vec![Ok(RgbImage::new(1, 1))]
        }
    }

    #[tokio::test]
    async fn a_wrong_result_count_renders_the_batch_one_job_at_a_time() {
        let (results, _) = render_requests(Arc::new(OneImage), batch(), "m").await;
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
}
