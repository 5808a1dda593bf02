//! The dashboard's pages as HTML. maud escapes every value it inserts; the one script
//! is a constant.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::csrf_token;
use crate::{
    db::{BatchInfo, BatchQuery, JobQuery},
    job::{BatchId, JobId, JobState},
    serve::{
        Api,
        error::ApiError,
        views::{Batch, parse_id, parse_state},
    },
};

/// Jobs on one contact sheet page.
const SHEET: i64 = 200;

/// Follows `/v1/events` and updates every element marked with a batch id; on a job's
/// success its tile shows the image. Pages read fine without it.
const LIVE: &str = r#"
(function () {
  var root = document.body.dataset.events;
  if (!root || !window.EventSource) return;
  var es = new EventSource(root);
  function duration(s) {
    if (s < 60) return Math.round(s) + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + Math.round(s % 60) + ' s';
    return Math.floor(s / 3600) + ' h ' + Math.round((s % 3600) / 60) + ' min';
  }
  es.addEventListener('progress', function (e) {
    var b = JSON.parse(e.data);
    document.querySelectorAll('[data-batch="' + b.id + '"]').forEach(function (el) {
      var bar = el.querySelector('.bar > span');
      if (bar) bar.style.width = (100 * b.progress).toFixed(1) + '%';
      var pct = el.querySelector('.pct');
      if (pct) pct.textContent = (100 * b.progress).toFixed(1) + ' %';
      ['queued', 'running', 'succeeded', 'failed', 'cancelled'].forEach(function (k) {
        var c = el.querySelector('.n-' + k);
        if (c) c.textContent = b.counts[k];
      });
      var started = el.querySelector('.started');
      if (started && b.started_at) started.textContent = b.started_at.replace('T', ' ').slice(0, 19);
      var rate = el.querySelector('.rate');
      if (rate && b.jobs_per_second != null) rate.textContent = b.jobs_per_second.toFixed(1) + ' jobs/s';
      var eta = el.querySelector('.eta');
      if (eta) eta.textContent = b.eta_seconds == null ? '–' : duration(b.eta_seconds);
      if (b.done) {
        el.classList.add('done');
        el.querySelectorAll('.while-running').forEach(function (x) { x.remove(); });
        var f = el.querySelector('.finished');
        if (f && b.finished_at) f.textContent = b.finished_at.replace('T', ' ').slice(0, 19);
      }
    });
  });
  es.addEventListener('job', function (e) {
    var j = JSON.parse(e.data);
    var tile = document.querySelector('[data-job="' + j.job_id + '"]');
    if (!tile) return;
    tile.dataset.state = j.state;
    var s = tile.querySelector('.state');
    if (s) s.textContent = j.state;
    if (j.state === 'succeeded' && !tile.querySelector('img')) {
      var img = document.createElement('img');
      img.src = '/v1/jobs/' + j.job_id + '/image';
      img.alt = tile.title;
      tile.querySelector('a').prepend(img);
    }
  });
})();
"#;

const STYLE: &str = "
body{font:14px system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:center}
header a{color:#fff;text-decoration:none}main{padding:20px}
table{border-collapse:collapse;width:100%;background:#fff}td,th{padding:6px 8px;border-bottom:1px solid #e3e6ea;text-align:left}
.bar{display:inline-block;width:160px;height:10px;background:#e3e6ea;border-radius:5px;overflow:hidden;vertical-align:middle}
.bar>span{display:block;height:100%;background:#3b82f6}.done .bar>span{background:#16a34a}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
.tile{background:#fff;border:1px solid #e3e6ea;border-radius:6px;padding:6px;font-size:12px;overflow:hidden}
.tile img{width:100%;height:auto;display:block;margin-bottom:4px}
.tile[data-state=failed]{border-color:#dc2626}.state{font-weight:600}
.error{color:#b91c1c;white-space:pre-wrap}pre{background:#fff;padding:10px;overflow:auto}
form.inline{display:inline}button{cursor:pointer}
";

fn layout(title: &str, events: Option<String>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · renderq" }
                style { (PreEscaped(STYLE)) }
            }
            body data-events=[events] {
                header {
                    a href="/" { strong { "renderq" } }
                    a href="/" { "batches" }
                    a href="/fleet" { "workers, queues, schedules" }
                    form.inline method="post" action="/logout" { button { "sign out" } }
                }
                main { (body) }
                script { (PreEscaped(LIVE)) }
            }
        }
    }
}

fn progress_bar(b: &BatchInfo) -> Markup {
    let p = &b.progress;
    let share = if p.total > 0 {
        p.finished() as f64 / p.total as f64
    } else {
        1.0
    };
    html! {
        span.bar { span style=(format!("width:{:.1}%", 100.0 * share)) {} }
        " " span.pct { (format!("{:.1} %", 100.0 * share)) }
    }
}

fn counts(b: &BatchInfo) -> Markup {
    let p = &b.progress;
    html! {
        "queued " span.n-queued { (p.queued) }
        " · running " span.n-running { (p.running) }
        " · succeeded " span.n-succeeded { (p.succeeded) }
        " · failed " span.n-failed { (p.failed) }
        " · cancelled " span.n-cancelled { (p.cancelled) }
    }
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or("–".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// Seconds as a person reads them (as the live script writes them).
fn duration(secs: f64) -> String {
    let s = secs.max(0.0);
    if s < 60.0 {
        format!("{} s", s.round())
    } else if s < 3600.0 {
        format!("{} min {} s", (s / 60.0).floor(), (s % 60.0).round())
    } else {
        format!(
            "{} h {} min",
            (s / 3600.0).floor(),
            ((s % 3600.0) / 60.0).round()
        )
    }
}

fn rate(view: &Batch) -> String {
    view.jobs_per_second
        .map_or("–".into(), |r| format!("{r:.1} jobs/s"))
}

fn eta(view: &Batch) -> String {
    view.eta_seconds.map_or("–".into(), duration)
}

/// A webhook's origin and outcome, or a dash.
fn webhook(view: &Batch) -> String {
    match &view.webhook {
        Some(h) => format!(
            "{}: {}",
            h.origin,
            h.outcome.as_deref().unwrap_or("not sent yet")
        ),
        None => "–".into(),
    }
}

/// The newest batches, filtered by name and state.
pub async fn batches(
    api: &Api,
    name: Option<String>,
    state: Option<String>,
) -> Result<Markup, ApiError> {
    let done = match state.as_deref() {
        Some("running") => Some(false),
        Some("done") => Some(true),
        _ => None,
    };
    let page = api
        .record
        .batch_page(&BatchQuery {
            name: name.clone().filter(|n| !n.is_empty()),
            done,
            before: None,
            limit: 100,
        })
        .await?;
    let body = html! {
        h1 { "Batches" }
        form method="get" action="/" {
            input type="search" name="name" placeholder="name contains" value=[name.as_deref()];
            " "
            select name="state" {
                option value="" { "any state" }
                option value="running" selected[done == Some(false)] { "running" }
                option value="done" selected[done == Some(true)] { "done" }
            }
            " " button { "filter" }
        }
        @if page.is_empty() {
            p { "No batches yet. Submit one with " code { "renderq submit FILE" } " or " code { "POST /v1/batches" } "." }
        } @else {
            table {
                tr {
                    th { "name" } th { "progress" } th { "jobs" } th { "throughput" } th { "ETA" }
                    th { "started" } th { "finished" } th { "webhook" }
                }
                @for b in &page {
                    @let view = Batch::of(b);
                    tr data-batch=(b.progress.batch_id) class=[b.progress.done.then_some("done")] {
                        td { a href=(format!("/batches/{}", b.progress.batch_id)) { (b.progress.name) } }
                        td { (progress_bar(b)) }
                        td { (b.progress.total) " · " (counts(b)) }
                        td.rate { (rate(&view)) }
                        td.eta { (eta(&view)) }
                        td.started { (time(b.first_started_at)) }
                        td.finished { (time(b.finished_at)) }
                        td { (webhook(&view)) }
                    }
                }
            }
        }
    };
    Ok(layout("Batches", Some("/v1/events".into()), body))
}

/// One batch: progress, throughput, webhook, actions, and its contact sheet.
pub async fn batch(
    api: &Api,
    id: &str,
    state: Option<String>,
    search: Option<String>,
    after: Option<String>,
) -> Result<Markup, ApiError> {
    let id: BatchId = parse_id(id, "batch")?;
    let query = JobQuery {
        state: state
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(parse_state)
            .transpose()?,
        search: search.clone().filter(|s| !s.is_empty()),
        after: after
            .as_deref()
            .filter(|a| !a.is_empty())
            .map(|a| parse_id::<JobId>(a, "job"))
            .transpose()?,
        limit: SHEET,
    };
    let info = api
        .record
        .batch_info(id)
        .await?
        .ok_or_else(|| ApiError::not_found("batch", id))?;
    let view = Batch::of(&info);
    let jobs = api.record.job_page(id, &query).await?;
    let failures = api.record.failures(id, 20).await?;
    let csrf = csrf_token(api);
    let next = (jobs.len() as i64 == SHEET)
        .then(|| jobs.last().map(|j| j.id))
        .flatten();
    let p = &info.progress;
    let body = html! {
        div data-batch=(id) class=[p.done.then_some("done")] {
            h1 { (p.name) }
            p { (progress_bar(&info)) " of " (p.total) " jobs · " (counts(&info)) }
            p {
                "queue " code { (info.queue) } " · created " (time(Some(p.created_at)))
                " · started " span.started { (time(info.first_started_at)) }
                " · finished " span.finished { (time(info.finished_at)) }
                " · " span.rate { (rate(&view)) }
                " · ETA " span.eta { (eta(&view)) }
            }
            @if view.webhook.is_some() {
                p { "webhook " (webhook(&view)) }
            }
            p {
                @if !p.done {
                    form.inline.while-running method="post" action=(format!("/batches/{id}/cancel")) {
                        input type="hidden" name="csrf" value=(csrf);
                        button { "cancel the batch" }
                    }
                }
                @if p.failed > 0 {
                    " "
                    form.inline method="post" action=(format!("/batches/{id}/retry")) {
                        input type="hidden" name="csrf" value=(csrf);
                        button { "retry failed jobs" }
                    }
                }
                " " a href=(format!("/v1/batches/{id}/manifest")) { "manifest (CSV)" }
            }
        }
        @if !failures.is_empty() {
            h2 { "Failed jobs" }
            table {
                @for f in &failures {
                    tr { td { a href=(format!("/jobs/{}", f.id)) { (f.id) } } td { "attempt " (f.attempt) } td.error { (f.error.as_deref().unwrap_or("")) } }
                }
            }
        }
        h2 { "Contact sheet" }
        form method="get" {
            input type="search" name="q" placeholder="prompt contains" value=[search.as_deref()];
            " "
            select name="state" {
                option value="" { "any state" }
                @for s in JobState::ALL {
                    option value=(s.as_str()) selected[query.state == Some(s)] { (s.as_str()) }
                }
            }
            " " button { "filter" }
        }
        div.sheet {
            @for j in &jobs {
                div.tile data-job=(j.id) data-state=(j.state.as_str()) title=(j.prompt) {
                    a href=(format!("/jobs/{}", j.id)) {
                        @if j.state == JobState::Succeeded {
                            img loading="lazy" src=(format!("/v1/jobs/{}/image", j.id)) alt=(j.prompt);
                        }
                        span.state { (j.state.as_str()) } " " (j.prompt.chars().take(80).collect::<String>())
                    }
                }
            }
        }
        @if let Some(next) = next {
            p { a href=(format!("/batches/{id}?after={next}&state={}&q={}", state.as_deref().unwrap_or(""), urlencode(search.as_deref().unwrap_or("")))) { "next " (SHEET) " jobs →" } }
        }
    };
    Ok(layout(
        &p.name,
        Some(format!("/v1/events?batch={id}")),
        body,
    ))
}

/// Percent-encodes a query value.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One job: its spec, state, attempts, worker, times, error and image.
pub async fn job(api: &Api, id: &str) -> Result<Markup, ApiError> {
    let id: JobId = parse_id(id, "job")?;
    let d = api
        .record
        .job_detail(id)
        .await?
        .ok_or_else(|| ApiError::not_found("job", id))?;
    let r = &d.row;
    let spec = serde_json::to_string_pretty(&d.spec).unwrap_or_default();
    let body = html! {
        h1 { "Job " (r.id) }
        @if let Some(batch) = r.batch_id { p { "batch " a href=(format!("/batches/{batch}")) { (batch) } } }
        table {
            tr { th { "state" } td data-state=(r.state.as_str()) { (r.state.as_str()) } }
            tr { th { "attempt" } td { (r.attempt) " of " (d.max_attempts) } }
            tr { th { "worker" } td { (r.worker.as_deref().unwrap_or("–")) } }
            tr { th { "created" } td { (time(Some(d.created_at))) } }
            tr { th { "started" } td { (time(d.started_at)) } }
            tr { th { "finished" } td { (time(d.finished_at)) } }
            @if d.run_at.is_some() { tr { th { "retry at" } td { (time(d.run_at)) } } }
            tr { th { "seed" } td { (r.seed) } }
            tr { th { "object key" } td { (r.output_key.as_deref().unwrap_or("–")) } }
            @if let Some(e) = &r.error { tr { th { "error" } td.error { (e) } } }
        }
        h2 { "Attempts" }
        @if d.attempts.is_empty() {
            p { "None yet: the job waits for a worker." }
        } @else {
            table.attempts {
                tr { th { "attempt" } th { "worker" } th { "started" } th { "ended" } th { "took" } th { "outcome" } th { "error" } }
                @for a in &d.attempts {
                    tr data-outcome=(a.outcome) {
                        td { (a.attempt) }
                        td { (a.worker.as_deref().unwrap_or("–")) }
                        td { (time(a.started_at)) }
                        td { (time(a.ended_at)) }
                        td { (took(a)) }
                        td { (outcome(&a.outcome, a.ended_at.is_some())) }
                        td.error { (a.error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        @if r.state == JobState::Succeeded {
            h2 { "Image" }
            img src=(format!("/v1/jobs/{}/image", r.id)) alt=(r.prompt) style="max-width:100%";
        }
        h2 { "Spec" }
        pre { (spec) }
    };
    Ok(layout(&format!("Job {}", r.id), None, body))
}

/// How long an attempt ran.
fn took(a: &crate::db::AttemptRow) -> String {
    match (a.started_at, a.ended_at) {
        (Some(start), Some(end)) => {
            let ms = (end - start).num_milliseconds().max(0);
            if ms < 10_000 {
                format!("{:.2} s", ms as f64 / 1000.0)
            } else {
                duration(ms as f64 / 1000.0)
            }
        }
        _ => "–".into(),
    }
}

/// What became of an attempt, in words.
fn outcome(state: &str, ended: bool) -> &str {
    match (state, ended) {
        ("running", false) => "running",
        ("running", true) => "taken over (its worker went silent)",
        ("retrying", _) => "failed, retried",
        ("queued", _) => "given back to the queue",
        (other, _) => other,
    }
}

/// The sign-in form.
pub fn login(csrf: &str, message: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            p { "Paste an API token (" code { "renderq token create --scope read --name me" } ")." }
            @if let Some(m) = message { p.error { (m) } }
            form method="post" action="/login" {
                input type="hidden" name="csrf" value=(csrf);
                input type="password" name="token" placeholder="rq_…" size="80" autocomplete="off";
                " " button { "sign in" }
            }
        },
    )
}

/// A refusal as a page.
pub fn error(message: &str) -> Markup {
    layout(
        "Error",
        None,
        html! { h1 { "Not here" } p.error { (message) } p { a href="/" { "back to the batches" } } },
    )
}

/// A worker counts as alive while its heartbeats are this recent.
const ALIVE: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// The fleet: workers, queues with their backlog, schedules with their firings.
pub async fn fleet(api: &Api) -> Result<Markup, ApiError> {
    let workers = api.record.workers().await?;
    let mut queues = Vec::new();
    for q in api.record.queues().await? {
        let backlog = api.record.backlog(&q).await?;
        queues.push((q, backlog));
    }
    let schedules = api.record.schedules().await?;
    let now = chrono::Utc::now();
    let body = html! {
        h1 { "Workers" }
        @if workers.is_empty() {
            p { "No worker has started on this record yet: " code { "renderq worker" } "." }
        } @else {
            table {
                tr { th { "worker" } th { "state" } th { "host" } th { "device" } th { "models" } th { "queue" } th { "jobs done" } th { "last heartbeat" } th { "started" } }
                @for w in &workers {
                    @let state = if w.stopped_at.is_some() { "stopped" } else if now - w.last_heartbeat > ALIVE { "silent" } else { "alive" };
                    tr data-worker-state=(state) {
                        td { (w.info.id) } td { (state) } td { (w.info.host) } td { (w.info.device) }
                        td { (w.info.models.join(", ")) } td { (w.info.queue) } td { (w.jobs_done) }
                        td { (time(Some(w.last_heartbeat))) } td { (time(Some(w.started_at))) }
                    }
                }
            }
        }
        h1 { "Queues" }
        table {
            tr { th { "queue" } th { "queued" } th { "running" } th { "retrying" } }
            @for (q, backlog) in &queues {
                tr data-queue=(q) {
                    td { (q) }
                    @for (_, n) in backlog { td { (n) } }
                }
            }
        }
        h1 { "Schedules" }
        @if schedules.is_empty() {
            p { "No schedules: " code { "renderq schedule add NAME --cron EXPR FILE" } "." }
        } @else {
            table {
                tr { th { "name" } th { "cron" } th { "zone" } th { "file" } th { "queue" } th { "last firing" } th { "next firing" } }
                @for sc in &schedules {
                    tr {
                        td { (sc.name) } td { code { (sc.cron) } } td { (sc.timezone) } td { (sc.file) } td { (sc.queue) }
                        td { (time(sc.last_fired_for)) } td { (time(sc.next_after(now))) }
                    }
                }
            }
        }
    };
    Ok(layout("Fleet", None, body))
}
