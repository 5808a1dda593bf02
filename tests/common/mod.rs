//! Shared test harness: every test gets its own database, its own queue (so its own
//! Redis keys) and its own bucket, on the real servers `scripts/services.sh` starts.
#![allow(dead_code)]

pub mod drill;

use std::{sync::Arc, time::Duration};

use renderq::{
    backend::Database,
    db::Record,
    dispatch::{Dispatch, RedisDispatch},
    job::{JobId, JobSpec, Limits, NewJob},
    render::Renderers,
    store::{S3Store, Store},
    worker::{Worker, WorkerConfig, WorkerReport},
};
use tokio_util::sync::CancellationToken;

/// A job of the queue as the record has it.
pub type Row = renderq::db::JobRow;

/// Runs a conformance test (an `async fn(Env)`) on every backend combination.
#[macro_export]
macro_rules! conformance {
    // `lease = D;` first: every environment (and the worker from `Env::config`)
    // holds claims for D, for tests whose renders (panics, backtraces) take longer
    // than the fast lease on a loaded machine.
    (lease = $lease:expr; $($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test]
            async fn postgres_redis() { super::$name(Env::with_lease(Kind::PgRedis, $lease).await).await }
            #[tokio::test]
            async fn postgres_only() { super::$name(Env::with_lease(Kind::PgDb, $lease).await).await }
            #[tokio::test]
            async fn sqlite() { super::$name(Env::with_lease(Kind::Sqlite, $lease).await).await }
        }
    )*};
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test]
            async fn postgres_redis() { super::$name(Env::with(Kind::PgRedis).await).await }
            #[tokio::test]
            async fn postgres_only() { super::$name(Env::with(Kind::PgDb).await).await }
            #[tokio::test]
            async fn sqlite() { super::$name(Env::with(Kind::Sqlite).await).await }
        }
    )*};
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

pub fn s3_endpoint() -> String {
    env("RENDERQ_TEST_S3_ENDPOINT", "http://127.0.0.1:9100")
}

pub fn s3_access_key() -> String {
    env("RENDERQ_TEST_S3_ACCESS_KEY", "renderq-test")
}

pub fn s3_secret_key() -> String {
    env("RENDERQ_TEST_S3_SECRET_KEY", "renderq-test-secret")
}

/// The AWS SDK variables that point the `renderq` binary at the S3 test server.
pub fn s3_vars() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", s3_endpoint()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", s3_access_key()),
        ("AWS_SECRET_ACCESS_KEY", s3_secret_key()),
    ]
}

pub fn admin_url() -> String {
    env(
        "RENDERQ_TEST_DATABASE_URL",
        "postgres://postgres:postgres@127.0.0.1:5432/postgres",
    )
}

pub fn redis_url() -> String {
    env("RENDERQ_TEST_REDIS_URL", "redis://127.0.0.1:6379")
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The backend combinations every conformance test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Postgres record, Redis Streams dispatch (the distributed setup).
    PgRedis,
    /// Postgres record and dispatch (no Redis).
    PgDb,
    /// SQLite record and dispatch (the embedded default).
    Sqlite,
}

/// One isolated environment: a fresh database (or SQLite file) and a fresh queue.
pub struct Env {
    pub kind: Kind,
    pub db_url: String,
    pub record: Arc<dyn Record>,
    pub queue: String,
    pub dispatch: Arc<dyn Dispatch>,
    /// Database dispatch's claim lease; a worker of this environment renews on it.
    pub lease: Duration,
    pub _dir: Option<tempfile::TempDir>,
}

impl Env {
    /// Postgres + Redis.
    pub async fn new() -> Env {
        Env::with(Kind::PgRedis).await
    }

    pub async fn with(kind: Kind) -> Env {
        Env::with_lease(kind, fast_config().lease).await
    }

    /// With `lease` on database dispatch's claims (a worker of this environment
    /// should have the same lease, since it renews them on that beat).
    pub async fn with_lease(kind: Kind, lease: Duration) -> Env {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let queue = unique("t");
        let (db_url, dir) = match kind {
            Kind::PgRedis | Kind::PgDb => {
                let name = unique("rq_t_");
                let admin = sqlx::PgPool::connect(&admin_url())
                    .await
                    .expect("admin connection");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&admin)
                    .await
                    .expect("create database");
                admin.close().await;
                (
                    format!("{}/{name}", admin_url().rsplit_once('/').unwrap().0),
                    None,
                )
            }
            Kind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("renderq.db").display());
                (url, Some(dir))
            }
        };
        let db = Database::open(Some(&db_url), true)
            .await
            .expect("open + migrate");
        let dispatch: Arc<dyn Dispatch> = match kind {
            Kind::PgRedis => Arc::new(
                RedisDispatch::connect(&redis_url(), &queue)
                    .await
                    .expect("redis"),
            ),
            Kind::PgDb | Kind::Sqlite => db.dispatch(&queue, lease),
        };
        Env {
            kind,
            db_url,
            record: db.record(),
            queue,
            dispatch,
            lease,
            _dir: dir,
        }
    }

    /// The `renderq` binary pointed at this environment's record, dispatch and queue,
    /// with no store set (each test names its own) and no Redis unless the kind has one.
    pub fn renderq(&self) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_renderq"));
        c.env_remove("REDIS_URL")
            .env_remove("RENDERQ_STORE")
            .envs(self.vars());
        c
    }

    /// The environment variables that point the `renderq` binary at this environment.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("DATABASE_URL", self.db_url.clone()),
            ("RENDERQ_QUEUE", self.queue.clone()),
        ];
        if self.kind == Kind::PgRedis {
            v.push(("REDIS_URL", redis_url()));
        }
        v
    }

    pub fn jobs(&self, lines: &[&str]) -> Vec<NewJob> {
        lines
            .iter()
            .map(|l| {
                let spec = JobSpec::parse(l, &Limits::default()).unwrap();
                NewJob {
                    id: spec.id.unwrap_or_else(JobId::generate),
                    spec,
                }
            })
            .collect()
    }

    pub async fn submit(&self, lines: &[&str]) -> renderq::submit::Submitted {
        let jobs = self.jobs(lines);
        renderq::submit::submit(
            self.record.as_ref(),
            self.dispatch.as_ref(),
            "test",
            &jobs,
            3,
        )
        .await
        .unwrap()
    }

    pub fn worker(&self, cfg: WorkerConfig, store: Arc<dyn Store>, renderers: Renderers) -> Worker {
        Worker::new(
            cfg,
            self.record.clone(),
            self.dispatch.clone(),
            store,
            renderers,
        )
    }

    /// Runs a worker in the background; cancel the token to stop it.
    /// `fast_config()` with this environment's lease.
    pub fn config(&self) -> WorkerConfig {
        WorkerConfig {
            lease: self.lease,
            ..fast_config()
        }
    }

    pub fn spawn_worker(
        &self,
        cfg: WorkerConfig,
        store: Arc<dyn Store>,
        renderers: Renderers,
    ) -> (CancellationToken, tokio::task::JoinHandle<WorkerReport>) {
        let token = CancellationToken::new();
        let worker = self.worker(cfg, store, renderers);
        let handle = tokio::spawn(worker.run(token.clone()));
        (token, handle)
    }

    /// Runs a worker with `renderers` into a directory store until `n` jobs are
    /// terminal, stops it, and returns the rows.
    pub async fn work_until_done(
        &self,
        n: usize,
        renderers: Renderers,
        store: &std::path::Path,
        within: Duration,
    ) -> Vec<Row> {
        let (stop, handle) = self.spawn_worker(
            self.config(),
            Arc::new(renderq::store::DirStore::new(store)),
            renderers,
        );
        let rows = self.wait_terminal(n, within).await;
        stop.cancel();
        handle.await.unwrap();
        rows
    }

    /// Runs one SQL statement on the record's database, as a person with a SQL
    /// client would; `{jobs}` names the jobs table on either backend.
    pub async fn exec(&self, sql: &str) {
        if self.kind == Kind::Sqlite {
            let pool = sqlx::SqlitePool::connect(&self.db_url).await.unwrap();
            let sql = sql.replace("{jobs}", "jobs");
            sqlx::query(&sql).execute(&pool).await.unwrap();
        } else {
            let pool = sqlx::PgPool::connect(&self.db_url).await.unwrap();
            let sql = sql.replace("{jobs}", "renderq.jobs");
            sqlx::query(&sql).execute(&pool).await.unwrap();
        }
    }

    /// The queue's jobs, oldest first.
    pub async fn rows(&self) -> Vec<Row> {
        self.record.jobs_of_queue(&self.queue).await.unwrap()
    }

    /// Nothing waits or is held in dispatch: Redis holds no entry (acknowledged and
    /// deleted), or the database has no `queued`/`running` row.
    pub async fn assert_dispatch_empty(&self) {
        if self.kind == Kind::PgRedis {
            assert_eq!(
                self.stream_counts().await,
                (0, 0),
                "stream entries, pending"
            );
        }
        assert_eq!(self.dispatch.backlog().await.unwrap(), 0, "backlog");
    }

    /// Waits (polling the record) until every job of the queue is terminal and there
    /// are at least `n` of them.
    pub async fn wait_terminal(&self, n: usize, within: Duration) -> Vec<Row> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let rows = self.rows().await;
            let done = rows.len() >= n && rows.iter().all(|r| r.state.is_terminal());
            if done {
                return rows;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("jobs not terminal within {within:?}: {rows:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A connection to the test Redis: one server, or a Sentinel or Cluster URL as
    /// `scripts/redis-topologies.sh` sets it.
    pub async fn redis(&self) -> renderq::dispatch::redis::Connection {
        renderq::dispatch::redis::Target::parse(&redis_url())
            .unwrap()
            .connect(Duration::from_secs(10))
            .await
            .unwrap()
    }

    pub fn stream(&self) -> String {
        format!("renderq:{{{}}}:stream", self.queue)
    }

    /// The queue's streams: the main one and every batch stream named in its set.
    pub async fn streams(&self) -> Vec<String> {
        let mut con = self.redis().await;
        let mut batches: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("renderq:{{{}}}:batches", self.queue))
            .query_async(&mut con)
            .await
            .unwrap();
        batches.insert(0, self.stream());
        batches
    }

    /// (XLEN, pending count) summed over the queue's streams.
    pub async fn stream_counts(&self) -> (usize, usize) {
        let mut con = self.redis().await;
        let (mut len, mut pending) = (0, 0);
        for stream in self.streams().await {
            len += redis::cmd("XLEN")
                .arg(&stream)
                .query_async::<usize>(&mut con)
                .await
                .unwrap();
            let summary: redis::Value = redis::cmd("XPENDING")
                .arg(&stream)
                .arg("renderq")
                .query_async(&mut con)
                .await
                .unwrap_or(redis::Value::Nil);
            if let redis::Value::Array(v) = summary
                && let Some(redis::Value::Int(n)) = v.first()
            {
                pending += *n as usize;
            }
        }
        (len, pending)
    }

    /// As `forget_queue_keys`, on the backend that has keys.
    pub async fn forget_queue_keys_if_redis(&self) {
        if self.kind == Kind::PgRedis {
            self.forget_queue_keys().await;
        }
    }

    /// Deletes every Redis key of the queue (streams, set, delayed retries).
    pub async fn forget_queue_keys(&self) {
        let mut con = self.redis().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("renderq:{{{}}}:*", self.queue))
            .query_async(&mut con)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut con)
                .await
                .unwrap();
        }
    }
}

/// `renderq run` of a one-job file written into `dir`, on a SQLite record and a
/// directory store there, one attempt per job.
pub fn run_one_job(dir: &std::path::Path, job: &str) -> std::process::Command {
    let file = dir.join("jobs.jsonl");
    std::fs::write(&file, format!("{job}\n")).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_renderq"));
    cmd.arg("run")
        .arg(&file)
        .args(["--max-attempts", "1"])
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("rq.db").display()),
        )
        .env_remove("REDIS_URL")
        .env("RENDERQ_STORE", dir.join("out"));
    cmd
}

/// The exit code, and stdout and stderr together.
pub fn exit_and_text(out: std::process::Output) -> (Option<i32>, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Fast settings for tests: short lease and backoff.
pub fn fast_config() -> WorkerConfig {
    WorkerConfig {
        concurrency: 16,
        max_batch: 4,
        lease: Duration::from_millis(1500),
        shutdown_deadline: Duration::from_secs(5),
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        upload_deadline: Duration::from_secs(5),
        reconcile_every: Duration::from_millis(300),
        ..WorkerConfig::default()
    }
}

/// A fresh bucket on the S3-compatible test server.
pub async fn s3_store() -> Arc<S3Store> {
    let (endpoint, access, secret) = (s3_endpoint(), s3_access_key(), s3_secret_key());
    let bucket = unique("rq-t-");
    let store = S3Store::from_parts(&endpoint, &access, &secret, &bucket, "out");
    store
        .client()
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket on the S3 test server (is scripts/services.sh running?)");
    Arc::new(store)
}

/// Every key in the store's bucket.
pub async fn s3_keys(store: &S3Store) -> Vec<String> {
    let out = store
        .client()
        .list_objects_v2()
        .bucket(store.bucket())
        .send()
        .await
        .unwrap();
    let mut keys: Vec<String> = out
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    keys.sort();
    keys
}

/// The PNG images under `dir`, at any depth.
pub fn pngs_under(dir: &std::path::Path) -> Vec<image::RgbImage> {
    let mut images = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if e.path().extension().is_some_and(|x| x == "png") {
                images.push(image::open(e.path()).unwrap().to_rgb8());
            }
        }
    }
    images
}

/// A diffusion job of `model`, 32x24, 3 steps, guidance 5.
pub fn diffusion_request(
    model: &str,
    prompt: &str,
    negative: &str,
    seed: u64,
) -> renderq::render::RenderRequest {
    renderq::render::RenderRequest {
        job_id: JobId::generate(),
        model: model.into(),
        prompt: prompt.into(),
        negative_prompt: (!negative.is_empty()).then(|| negative.to_string()),
        width: 32,
        height: 24,
        steps: Some(3),
        guidance: Some(5.0),
        sampler: Default::default(),
        seed,
    }
}

/// The images of `batch`, every job rendered.
pub async fn render_all(
    r: &dyn renderq::render::Renderer,
    batch: &[renderq::render::RenderRequest],
) -> Vec<image::RgbImage> {
    r.render(batch)
        .await
        .into_iter()
        .map(|i| i.expect("rendered"))
        .collect()
}

/// `renderq run JOBS --diffusion MODELS --models-dir DIR` on SQLite and a directory
/// store under `work` (images in `work/out`), one attempt per job: its exit code and
/// output.
pub fn run_diffusion(
    work: &std::path::Path,
    jobs: &std::path::Path,
    models: &std::path::Path,
    diffusion: &str,
) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_renderq"))
        .arg("run")
        .arg(jobs)
        .args([
            "--max-attempts",
            "1",
            "--diffusion",
            diffusion,
            "--models-dir",
        ])
        .arg(models)
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", work.join("rq.db").display()),
        )
        .env("RENDERQ_STORE", work.join("out"))
        .env_remove("REDIS_URL")
        .env_remove("RENDERQ_DIFFUSION")
        .output()
        .unwrap();
    exit_and_text(out)
}

/// `renderq serve`'s router on an ephemeral port, on this environment's record and
/// dispatch and a fresh directory store; it stops when the returned guard drops.
pub struct ApiServer {
    pub base: String,
    pub http: reqwest::Client,
    pub store: Arc<dyn Store>,
    pub dir: tempfile::TempDir,
    pub _stop: tokio_util::sync::DropGuard,
}

impl ApiServer {
    pub async fn start(
        env: &Env,
        auth: renderq::serve::AuthMode,
        max_body_bytes: usize,
        generation_timeout: Duration,
    ) -> ApiServer {
        use renderq::serve;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(renderq::store::DirStore::new(dir.path()));
        let api = Arc::new(serve::Api {
            record: env.record.clone(),
            dispatch: env.dispatch.clone(),
            store: store.clone(),
            auth,
            limits: Limits::default(),
            max_body_bytes,
            generation_timeout,
            csrf_secret: rand::random(),
            events: (env.kind != Kind::Sqlite).then(|| serve::relay_events(&env.db_url)),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn(serve::serve(listener, serve::router(api), stop.clone()));
        ApiServer {
            base,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            store,
            dir,
            _stop: stop.drop_guard(),
        }
    }
}
