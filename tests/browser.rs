//! The dashboard in a real browser: Debian's `chromium`, headless, driven through
//! `chromedriver` (WebDriver) by fantoccini. A batch's progress reaches 100 % on a page
//! that is never reloaded, its images land on the contact sheet, a job opens with its
//! image, and a batch is cancelled from its button. Screenshots go to
//! `target/screenshots/`.

mod common;

use std::{process::Command, time::Duration};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use renderq::{
    job::JobState,
    render::Renderers,
    serve::{self, AuthMode},
};
use serde_json::json;

/// `chromedriver` on a free port, stopped on drop.
struct Driver {
    child: std::process::Child,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser() -> (Driver, Client) {
    let port = drill::free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; scripts/services.sh installs it)");
    drill::wait_port(port).await;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--window-size=1280,900"]}),
    );
    let client = ClientBuilder::rustls()
        .expect("a TLS config")
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a chromium session");
    (Driver { child }, client)
}

/// The text of the first element `css` selects.
async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Submits JSON Lines through the API; returns the batch id.
async fn submit(s: &ApiServer, name: &str, lines: String) -> String {
    let made: serde_json::Value = s
        .http
        .post(format!("{}/v1/batches?name={name}", s.base))
        .body(lines)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    made["batch_id"].as_str().unwrap().to_string()
}

/// Polls `check` (a script returning a boolean) until it holds, for up to 30 s.
async fn until(c: &Client, what: &str, check: &str) {
    for _ in 0..150 {
        if c.execute(check, vec![]).await.unwrap() == json!(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what} did not happen within 30 s");
}

async fn screenshot(c: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{name}.png")),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
}

#[tokio::test]
async fn the_dashboard_in_a_real_browser() {
    let env = Env::with(Kind::PgRedis).await;
    let s = ApiServer::start(
        &env,
        AuthMode::Off,
        serve::DEFAULT_MAX_BODY_BYTES,
        Duration::from_secs(30),
    )
    .await;
    let lines: String = [
        "red", "blue", "green", "gold", "teal", "plum", "navy", "rust", "sand",
    ]
    .iter()
    .map(|c| format!("{{\"prompt\":\"a {c} teapot\",\"width\":192,\"height\":192}}\n"))
    .collect();
    let batch = submit(&s, "teapots", lines).await;
    let (_driver, c) = browser().await;

    // The list, then the batch's page at 0 %, loaded once.
    c.goto(&format!("{}/", s.base)).await.unwrap();
    assert_eq!(
        text(&c, &format!("tr[data-batch='{batch}'] td a")).await,
        "teapots"
    );
    c.goto(&format!("{}/batches/{batch}", s.base))
        .await
        .unwrap();
    assert_eq!(text(&c, ".pct").await, "0.0 %");
    screenshot(&c, "batch-queued").await;
    // A marker the page keeps only if it is never reloaded.
    c.execute("window.notReloaded = true", vec![])
        .await
        .unwrap();
    // Let the page's EventSource and the server's LISTEN settle before work starts.
    tokio::time::sleep(Duration::from_millis(800)).await;

    let (stop, worker) = env.spawn_worker(fast_config(), s.store.clone(), Renderers::builtin(0));
    until(
        &c,
        "progress reaching 100 %",
        "return document.querySelector('.pct').textContent === '100.0 %'",
    )
    .await;
    until(
        &c,
        "nine images on the sheet, loaded",
        "var i = document.querySelectorAll('.sheet img'); \
         return i.length === 9 && Array.from(i).every(x => x.complete && x.naturalWidth === 192)",
    )
    .await;
    assert_eq!(
        c.execute("return window.notReloaded === true", vec![])
            .await
            .unwrap(),
        json!(true)
    );
    assert_eq!(text(&c, ".n-succeeded").await, "9");
    // The start and throughput arrived live too (the page was loaded before either).
    until(
        &c,
        "the start time and the throughput, live",
        "return /^\\d{4}-\\d\\d-\\d\\d /.test(document.querySelector('.started').textContent) \
         && / jobs\\/s$/.test(document.querySelector('.rate').textContent)",
    )
    .await;
    until(
        &c,
        "the finished batch losing its cancel button and gaining its finish time",
        "return document.querySelector(\"form[action$='/cancel']\") === null \
         && /^\\d{4}-\\d\\d-\\d\\d /.test(document.querySelector('.finished').textContent)",
    )
    .await;
    screenshot(&c, "batch-done").await;
    stop.cancel();
    worker.await.unwrap();

    // A job, and its image full size.
    c.find(Locator::Css(".sheet .tile a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &c,
        "the job page",
        "return document.querySelector('h1').textContent.startsWith('Job ')",
    )
    .await;
    until(&c, "the full-size image", "var i = document.querySelector('main img'); return !!i && i.complete && i.naturalWidth === 192").await;
    assert!(c.source().await.unwrap().contains("succeeded"));
    screenshot(&c, "job").await;

    // Cancel a batch nobody works, from its button.
    let other = submit(
        &s,
        "to-cancel",
        "{\"prompt\":\"x\"}\n{\"prompt\":\"y\"}\n".into(),
    )
    .await;
    c.goto(&format!("{}/batches/{other}", s.base))
        .await
        .unwrap();
    c.find(Locator::Css("form[action$='/cancel'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(&c, "the cancelled batch's page", "return document.querySelector('.n-cancelled') && document.querySelector('.n-cancelled').textContent === '2'").await;
    screenshot(&c, "batch-cancelled").await;
    let rows = env.rows().await;
    let cancelled = rows
        .iter()
        .filter(|r| r.state == JobState::Cancelled)
        .count();
    assert_eq!(cancelled, 2);
    c.close().await.unwrap();
}
