//! The web dashboard of `renderq serve`, over HTTP on real backends: pages that read
//! without JavaScript, values escaped, live hooks in place, actions guarded by CSRF
//! tokens and scopes, and sign-in by token into an HttpOnly cookie.

mod common;

use std::time::Duration;

use common::*;
use renderq::{
    render::Renderers,
    serve::{self, AuthMode},
    token::{self, Scope},
};

type Site = ApiServer;

async fn site(env: &Env, auth: AuthMode) -> Site {
    ApiServer::start(
        env,
        auth,
        serve::DEFAULT_MAX_BODY_BYTES,
        Duration::from_secs(30),
    )
    .await
}

/// What the tests do with the dashboard.
trait Browse {
    async fn page(&self, path: &str, cookie: Option<&str>) -> (u16, String);
    async fn form(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        cookie: Option<&str>,
    ) -> reqwest::Response;
    async fn submit(&self, name: &str, n: usize, cookie: Option<&str>) -> String;
}

impl Browse for Site {
    async fn page(&self, path: &str, cookie: Option<&str>) -> (u16, String) {
        let mut r = self.http.get(format!("{}{path}", self.base));
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    }

    async fn form(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        cookie: Option<&str>,
    ) -> reqwest::Response {
        let mut r = self.http.post(format!("{}{path}", self.base)).form(fields);
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        r.send().await.unwrap()
    }

    async fn submit(&self, name: &str, n: usize, cookie: Option<&str>) -> String {
        let body: String = (0..n)
            .map(|i| {
                format!("{{\"prompt\":\"teapot {i} <b>bold</b>\",\"width\":64,\"height\":64}}\n")
            })
            .collect();
        let mut r = self
            .http
            .post(format!("{}/v1/batches", self.base))
            .query(&[("name", name)])
            .body(body);
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        let answer: serde_json::Value = r.send().await.unwrap().json().await.unwrap();
        answer["batch_id"].as_str().unwrap().to_string()
    }
}

/// The value of the first `name="csrf"` hidden input on a page.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a CSRF field on the page");
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

async fn pages_show_batches_sheets_and_jobs(env: Env) {
    let s = site(&env, AuthMode::Off).await;
    let hostile = "<script>alert(1)</script> & co";
    let batch = s.submit(hostile, 3, None).await;

    let (status, home) = s.page("/", None).await;
    assert_eq!(status, 200);
    assert!(
        home.contains(&format!("href=\"/batches/{batch}\"")),
        "{home}"
    );
    assert!(home.contains(&format!("data-batch=\"{batch}\"")));
    assert!(home.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"));
    assert!(
        !home.contains("<script>alert(1)"),
        "a batch name reached the page unescaped"
    );
    assert!(home.contains("data-events=\"/v1/events\""), "the live hook");
    let (_, filtered) = s.page("/?name=nothing-like-it", None).await;
    assert!(!filtered.contains(&batch));

    let (status, sheet) = s.page(&format!("/batches/{batch}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(sheet.matches("<div class=\"tile\"").count(), 3);
    assert!(sheet.contains("cancel the batch"));
    assert!(
        !sheet.contains("<b>bold</b>"),
        "a prompt reached the page unescaped"
    );
    assert!(!sheet.contains("<img"), "no image before any job succeeded");

    let (stop, worker) = env.spawn_worker(fast_config(), s.store.clone(), Renderers::builtin(0));
    env.wait_terminal(3, Duration::from_secs(60)).await;
    stop.cancel();
    worker.await.unwrap();

    let (_, sheet) = s.page(&format!("/batches/{batch}"), None).await;
    assert_eq!(sheet.matches("src=\"/v1/jobs/").count(), 3, "{sheet}");
    assert!(
        !sheet.contains("cancel the batch"),
        "a finished batch offers no cancel"
    );
    assert!(sheet.contains("class=\"done\""));
    let (_, one) = s
        .page(
            &format!("/batches/{batch}?state=succeeded&q=TEAPOT%201"),
            None,
        )
        .await;
    assert_eq!(one.matches("<div class=\"tile\"").count(), 1);
    let job = env.rows().await[0].id;
    let (status, page) = s.page(&format!("/jobs/{job}"), None).await;
    assert_eq!(status, 200);
    assert!(page.contains("succeeded") && page.contains(&format!("src=\"/v1/jobs/{job}/image\"")));
    // Its one attempt, with the worker that ran it.
    assert_eq!(
        page.matches("data-outcome=\"succeeded\"").count(),
        1,
        "{page}"
    );
    let worker = env.rows().await[0].worker.clone().unwrap();
    assert!(page.contains(&worker), "{page}");
    // The list shows the finished batch's start and throughput.
    let (_, home) = s.page("/", None).await;
    let row = &home[home.find(&format!("data-batch=\"{batch}\"")).unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains(" jobs/s</td>"), "{row}");
    assert!(
        !row.contains("class=\"started\">–<"),
        "no start shown: {row}"
    );
    let image = s
        .http
        .get(format!("{}/v1/jobs/{job}/image", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(image.headers()["content-type"], "image/png");

    for path in [
        "/batches/not-an-id",
        "/jobs/0000",
        &format!("/jobs/{}", uuid::Uuid::now_v7()),
    ] {
        let (status, page) = s.page(path, None).await;
        assert!(status == 400 || status == 404, "{path}: {status}");
        assert!(page.contains("back to the batches"));
    }
}

async fn actions_need_the_csrf_token(env: Env) {
    let s = site(&env, AuthMode::Off).await;
    let batch = s.submit("to cancel", 2, None).await;
    let forged = s
        .form(
            &format!("/batches/{batch}/cancel"),
            &[("csrf", "0000")],
            None,
        )
        .await;
    assert_eq!(forged.status(), 403);
    assert!(
        env.rows()
            .await
            .iter()
            .all(|r| r.state == renderq::job::JobState::Queued)
    );
    let (_, sheet) = s.page(&format!("/batches/{batch}"), None).await;
    let done = s
        .form(
            &format!("/batches/{batch}/cancel"),
            &[("csrf", &csrf_of(&sheet))],
            None,
        )
        .await;
    assert_eq!(done.status(), 303);
    assert_eq!(
        done.headers()["location"],
        format!("/batches/{batch}").as_str()
    );
    assert!(
        env.rows()
            .await
            .iter()
            .all(|r| r.state == renderq::job::JobState::Cancelled)
    );
}

conformance!(
    pages_show_batches_sheets_and_jobs,
    actions_need_the_csrf_token
);

#[tokio::test]
async fn sign_in_keeps_the_token_in_an_http_only_cookie() {
    let env = Env::with(Kind::PgRedis).await;
    let s = site(&env, AuthMode::Required).await;
    let (status, _) = s.page("/", None).await;
    assert_eq!(
        status, 303,
        "a page without a token sends the browser to sign in"
    );
    let (status, login) = s.page("/login", None).await;
    assert_eq!(status, 200);
    let csrf = csrf_of(&login);

    let wrong = s
        .form("/login", &[("token", "rq_nope"), ("csrf", &csrf)], None)
        .await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());

    let t = token::generate();
    env.record
        .create_token(&t.id, "viewer", Scope::Read, &t.secret_hash)
        .await
        .unwrap();
    let stale = s
        .form("/login", &[("token", &t.text), ("csrf", "x")], None)
        .await;
    assert_eq!(
        stale.status(),
        401,
        "a sign-in form from elsewhere is refused"
    );
    let ok = s
        .form("/login", &[("token", &t.text), ("csrf", &csrf)], None)
        .await;
    assert_eq!(ok.status(), 303);
    let cookie = ok.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_string();

    let (status, home) = s.page("/", Some(&cookie)).await;
    assert_eq!(status, 200, "{home}");
    // The cookie carries the token's scope: a reader cannot cancel.
    let admin = token::generate();
    env.record
        .create_token(&admin.id, "ops", Scope::Admin, &admin.secret_hash)
        .await
        .unwrap();
    let admin_cookie = format!("renderq_token={}", admin.text);
    let batch = s.submit("guarded", 1, Some(&admin_cookie)).await;
    let (_, sheet) = s.page(&format!("/batches/{batch}"), Some(&cookie)).await;
    let refused = s
        .form(
            &format!("/batches/{batch}/cancel"),
            &[("csrf", &csrf_of(&sheet))],
            Some(&cookie),
        )
        .await;
    assert_eq!(refused.status(), 403);
    let done = s
        .form(
            &format!("/batches/{batch}/cancel"),
            &[("csrf", &csrf_of(&sheet))],
            Some(&admin_cookie),
        )
        .await;
    assert_eq!(done.status(), 303);

    let out = s.form("/logout", &[], Some(&cookie)).await;
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    env.record.revoke_token("viewer").await.unwrap();
    let (status, _) = s.page("/", Some(&cookie)).await;
    assert_eq!(status, 303, "a revoked token's cookie signs nobody in");
}

async fn the_fleet_page_shows_workers_queues_and_schedules(env: Env) {
    let s = site(&env, AuthMode::Off).await;
    let (_, empty) = s.page("/fleet", None).await;
    assert!(empty.contains("No worker has started"));
    s.submit("backlog", 2, None).await;
    env.record
        .add_schedule(&renderq::schedule::Schedule {
            name: "nightly-<shoes>".into(),
            cron: "0 3 * * *".into(),
            timezone: "UTC".into(),
            file: "/data/shoes.csv".into(),
            queue: env.queue.clone(),
            options: Default::default(),
            last_fired_for: None,
            created_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    let (_, page) = s.page("/fleet", None).await;
    assert!(page.contains(&format!("data-queue=\"{}\"", env.queue)));
    let row = &page[page.find(&format!("data-queue=\"{}\"", env.queue)).unwrap()..];
    assert!(
        row.starts_with(&format!(
            "data-queue=\"{}\"><td>{}</td><td>2</td>",
            env.queue, env.queue
        )),
        "{row}"
    );
    assert!(
        page.contains("nightly-&lt;shoes&gt;") && page.contains("03:00:00"),
        "{page}"
    );

    let (stop, worker) = env.spawn_worker(fast_config(), s.store.clone(), Renderers::builtin(0));
    env.wait_terminal(2, Duration::from_secs(60)).await;
    let (_, page) = s.page("/fleet", None).await;
    assert!(page.contains("data-worker-state=\"alive\""), "{page}");
    stop.cancel();
    worker.await.unwrap();
    let (_, page) = s.page("/fleet", None).await;
    assert!(page.contains("data-worker-state=\"stopped\""), "{page}");
}

conformance!(the_fleet_page_shows_workers_queues_and_schedules);
