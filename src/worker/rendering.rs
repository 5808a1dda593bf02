//! The render stage: claimed jobs grouped by what can share a device call, each
//! call run with its panics contained.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc, time::Duration};

use futures::{StreamExt, stream::FuturesUnordered};
use image::RgbImage;
use tokio::sync::mpsc;
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
type Call = Pin<Box<dyn Future<Output = (LaneCall, Vec<InFlight>, Vec<RenderResult>)> + Send>>;

/// Which lane a call ran on, and when it started.
struct LaneCall {
    lane: String,
    label: String,
    slots: usize,
    started: std::time::Instant,
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
    let mut busy: HashMap<String, usize> = HashMap::new();
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
            Some((call, group, results)) = calls.next() => {
                tick_current();
                if let Some(n) = busy.get_mut(&call.lane) {
                    *n = n.saturating_sub(1);
                }
                // An unknown model's "call" fails at once: it is no lane.
                if !call.lane.is_empty() {
                    s.sizer.call_finished(&call.lane, &call.label, call.slots, group.len(), call.started);
                }
                for (item, result) in group.into_iter().zip(results) {
                    if tx.send((item, result)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Groups the waiting jobs by what can share a device call (up to `--max-batch`)
/// and starts each group whose lane has room; the rest keep waiting.
fn start_calls(
    s: &Arc<Shared>,
    waiting: &mut Vec<InFlight>,
    calls: &mut FuturesUnordered<Call>,
    busy: &mut HashMap<String, usize>,
) {
    if waiting.is_empty() {
        return;
    }
    let max_batch = s.cfg.max_batch.max(1);
    let mut groups: Vec<(BatchKey, Vec<InFlight>)> = Vec::new();
    for item in waiting.drain(..) {
        let key = RenderRequest::from_job(&item.job).batch_key();
        match groups
            .iter_mut()
            .find(|(k, g)| *k == key && g.len() < max_batch)
        {
            Some((_, g)) => g.push(item),
            None => groups.push((key, vec![item])),
        }
    }
    for (key, group) in groups {
        // A lane is a device its renderers share, or a renderer of its own (every
        // `remote/<name>` shares the endpoint's).
        let (lane, label, lanes) = match s.renderers.get(&key.model) {
            Some(r) => match r.device() {
                Some(device) => (device.clone(), device, r.lanes()),
                None => {
                    let own = format!("renderer {:p}", Arc::as_ptr(&r) as *const ());
                    (own, key.model.clone(), r.lanes())
                }
            },
            None => (String::new(), String::new(), usize::MAX), // fails at once: never waits
        };
        let in_flight = busy.entry(lane.clone()).or_default();
        if *in_flight >= lanes {
            waiting.extend(group);
            continue;
        }
        *in_flight += 1;
        tick_current();
        let s = s.clone();
        let call = LaneCall {
            lane,
            label,
            slots: lanes,
            started: std::time::Instant::now(),
        };
        calls.push(Box::pin(async move {
            let results = render_group(&s, &key.model, &group).await;
            (call, group, results)
        }));
    }
}

/// One device call. A panic is contained: a batch that panics is rendered again one
/// job at a time, so only the job that causes it fails.
async fn render_group(
    s: &Shared,
    model: &str,
    group: &[InFlight],
) -> Vec<Result<RgbImage, RenderError>> {
    let Some(renderer) = s.renderers.get(model) else {
        let err = s.renderers.unknown_model(model);
        return group.iter().map(|_| Err(err.clone())).collect();
    };
    // Jobs cancelled (or taken over) while they waited for the device are not
    // rendered: their device time goes to live jobs. Only a wait of a second or more
    // is worth the query; a fresher job's outcome is still fenced out if cancelled.
    let waited = group
        .iter()
        .any(|i| i.claimed_at.elapsed() >= RECHECK_AFTER);
    let live = if waited {
        still_ours(s, group).await
    } else {
        vec![true; group.len()]
    };
    let requests: Vec<RenderRequest> = group
        .iter()
        .zip(&live)
        .filter(|(_, live)| **live)
        .map(|(i, _)| RenderRequest::from_job(&i.job))
        .collect();
    if requests.len() < group.len() {
        let mut rendered = render_requests(renderer, requests, model).await.into_iter();
        return live
            .iter()
            .map(|live| match live {
                true => rendered
                    .next()
                    .unwrap_or_else(|| Err(RenderError::Retry("missing result".into()))),
                false => Err(RenderError::Abort("cancelled before rendering".into())),
            })
            .collect();
    }
    render_requests(renderer, requests, model).await
}

/// A job that waited this long since its claim is checked before it renders.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// Whether each job is still running under the attempt this worker claimed.
/// On a database error all are assumed live (the completion fence still holds).
async fn still_ours(s: &Shared, group: &[InFlight]) -> Vec<bool> {
    let ids: Vec<_> = group.iter().map(|i| i.job.id).collect();
    match s.record.states(&ids).await {
        Ok(states) => group
            .iter()
            .map(|i| {
                states.iter().any(|(id, st, attempt)| {
                    *id == i.job.id && *st == JobState::Running && *attempt == i.job.attempt
                })
            })
            .collect(),
        Err(_) => vec![true; group.len()],
    }
}

/// Renders one device call. A panic, or a result count that does not match the
/// requests, renders the batch again one job at a time: only the job that causes it
/// fails, and the rest of the batch succeeds.
async fn render_requests(
    renderer: std::sync::Arc<dyn crate::render::Renderer>,
    requests: Vec<RenderRequest>,
    model: &str,
) -> Vec<Result<RgbImage, RenderError>> {
    if requests.is_empty() {
        return Vec::new();
    }
    let call = |reqs: Vec<RenderRequest>| {
        let r = renderer.clone();
        async move {
            let n = reqs.len();
            let started = std::time::Instant::now();
            // Its own task: a panic ends that task, not this stage.
            let rendered = tokio::spawn(async move { r.render(&reqs).await }).await;
            metrics().device_call(model, n, started.elapsed().as_secs_f64());
            match rendered {
                Ok(out) if out.len() == n => Ok(out),
                Ok(out) => Err(format!(
                    "renderer returned {} images for {n} requests",
                    out.len()
                )),
                Err(e) => Err(panic_message(e)),
            }
        }
    };
    match call(requests.clone()).await {
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
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    let msg = match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into()),
        Err(e) => e.to_string(),
    };
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
            let results = render_requests(renderer, batch(), "m").await;
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
        let results = render_requests(Arc::new(OneImage), batch(), "m").await;
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
}
