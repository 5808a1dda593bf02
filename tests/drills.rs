//! Failure drills: real `renderq worker` processes against real Postgres, Redis and
//! s3s-fs, with faults injected from outside. Each drill owns its Redis and its S3
//! server (so it may flush, kill and restart them) and its database. After the fault
//! every job must end with exactly one `succeeded` row, exactly one `succeeded` event
//! and exactly one object at its key.
//!
//! Lines starting `DRILL` are the figures the README quotes.

mod common;

use std::{
    collections::HashMap,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::*;
use renderq::{backend::Database, db::Record, store::S3Store};

const ACCESS: &str = "drill-access";
const SECRET: &str = "drill-secret-key";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_port(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing answers on port {port}");
}

fn sh(cmd: &str, args: &[&str]) {
    let ok = Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "{cmd} {args:?}");
}

/// A server process of the drill's own on a free port: the drill kills it and starts it
/// again on the same port (and the same data), and dropping it stops it.
struct Server {
    port: u16,
    command: Box<dyn Fn(u16) -> Command + Send + Sync>,
    child: Option<Child>,
}

impl Server {
    async fn start(command: impl Fn(u16) -> Command + Send + Sync + 'static) -> Self {
        let mut s = Server {
            port: free_port(),
            command: Box::new(command),
            child: None,
        };
        s.up().await;
        s
    }
    async fn up(&mut self) {
        let mut command = (self.command)(self.port);
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        self.child = Some(child);
        wait_port(self.port).await;
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis server of the drill's own, without persistence.
struct PrivateRedis(Server);

impl PrivateRedis {
    async fn start() -> Self {
        PrivateRedis(
            Server::start(|port| {
                let mut c = Command::new("redis-server");
                c.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no"]);
                c
            })
            .await,
        )
    }
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.0.port)
    }
}

/// An s3s-fs server of the drill's own, on a directory that survives restarts (the
/// server is declared first, so it stops before the directory goes).
struct PrivateS3 {
    server: Server,
    _dir: tempfile::TempDir,
}

impl PrivateS3 {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let bin = std::env::var("RENDERQ_TEST_S3S_BIN").unwrap_or_else(|_| "s3s-fs".into());
        let server = Server::start(move |port| {
            let mut c = Command::new(&bin);
            c.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS, "--secret-key", SECRET])
                .arg(&root);
            c
        })
        .await;
        PrivateS3 { server, _dir: dir }
    }
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port)
    }
}

/// One drill: a database, a queue, a Redis, an S3 server with a bucket, workers.
struct Drill {
    db_url: String,
    record: Arc<dyn Record>,
    queue: String,
    redis: PrivateRedis,
    s3: PrivateS3,
    store: S3Store,
    workers: Vec<(String, Child)>,
    /// Workers dispatch through Redis; false: through the Postgres record.
    use_redis: bool,
    /// `succeeded` events seen per job (NOTIFY renderq_events).
    succeeded_events: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drill {
    async fn new(db_url: Option<String>) -> Drill {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let db_url = match db_url {
            Some(u) => u,
            None => {
                let name = unique("rq_t_");
                let admin = sqlx::PgPool::connect(&admin_url()).await.unwrap();
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&admin)
                    .await
                    .unwrap();
                format!("{}/{name}", admin_url().rsplit_once('/').unwrap().0)
            }
        };
        let record = Database::open(Some(&db_url), true).await.unwrap().record();
        let redis = PrivateRedis::start().await;
        let s3 = PrivateS3::start().await;
        let store = S3Store::from_parts(&s3.endpoint(), ACCESS, SECRET, "drill", "out");
        store
            .client()
            .create_bucket()
            .bucket("drill")
            .send()
            .await
            .unwrap();
        let succeeded_events = Arc::new(Mutex::new(HashMap::new()));
        let mut listener = sqlx::postgres::PgListener::connect(&db_url).await.unwrap();
        listener.listen("renderq_events").await.unwrap();
        let events = succeeded_events.clone();
        tokio::spawn(async move {
            while let Ok(n) = listener.recv().await {
                let v: serde_json::Value = serde_json::from_str(n.payload()).unwrap();
                if v["state"] == "succeeded" {
                    *events
                        .lock()
                        .unwrap()
                        .entry(v["job_id"].as_str().unwrap().to_string())
                        .or_default() += 1;
                }
            }
        });
        Drill {
            db_url,
            record,
            queue: unique("d"),
            redis,
            s3,
            store,
            workers: Vec::new(),
            use_redis: true,
            succeeded_events,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_renderq"));
        c.args(args).env("DATABASE_URL", &self.db_url);
        if self.use_redis {
            c.env("REDIS_URL", self.redis.url());
        } else {
            c.env_remove("REDIS_URL");
        }
        c.env("RENDERQ_QUEUE", &self.queue)
            .env("RENDERQ_STORE", "s3://drill/out")
            .env("AWS_ENDPOINT_URL", self.s3.endpoint())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", ACCESS)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("RENDERQ_RECONCILE_SECS", "1")
            .env("RENDERQ_LOG", "renderq=info")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// Submits `n` noop jobs through the real CLI.
    fn submit(&self, n: usize, poison: Option<usize>) {
        self.submit_with(n, poison, 3)
    }

    fn submit_with(&self, n: usize, poison: Option<usize>, max_attempts: i32) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jobs.jsonl");
        let lines: Vec<String> = (0..n)
            .map(|i| {
                let prompt = if Some(i) == poison {
                    format!("POISON {i}")
                } else {
                    format!("job {i}")
                };
                format!(r#"{{"prompt":"{prompt}","model":"noop","width":8,"height":8}}"#)
            })
            .collect();
        std::fs::write(&file, lines.join("\n")).unwrap();
        let ok = self
            .command(&["submit", "--max-attempts", &max_attempts.to_string()])
            .arg(&file)
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn spawn_worker(&mut self, extra: &[&str], delay_ms: u64) -> String {
        let id = unique("w-");
        let mut args = vec![
            "worker",
            "--worker-id",
            &id,
            "--concurrency",
            "4",
            "--max-batch",
            "2",
        ];
        args.extend_from_slice(extra);
        let child = self
            .command(&args)
            .env("RENDERQ_NOOP_DELAY_MS", delay_ms.to_string())
            .env("RENDERQ_PANIC_ON", "POISON")
            .spawn()
            .unwrap();
        self.workers.push((id.clone(), child));
        id
    }

    fn pid(&self, id: &str) -> u32 {
        self.workers.iter().find(|(w, _)| w == id).unwrap().1.id()
    }

    fn signal(&self, id: &str, sig: &str) {
        sh("kill", &[&format!("-{sig}"), &self.pid(id).to_string()]);
    }

    async fn rows(&self) -> Vec<renderq::db::JobRow> {
        loop {
            match self.record.jobs_of_queue(&self.queue).await {
                Ok(rows) => return rows,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await, // Postgres restarting
            }
        }
    }

    /// Waits until `pred` holds for the rows.
    async fn until(
        &self,
        within: Duration,
        what: &str,
        pred: impl Fn(&[renderq::db::JobRow]) -> bool,
    ) {
        let end = Instant::now() + within;
        loop {
            let rows = self.rows().await;
            if pred(&rows) {
                return;
            }
            assert!(
                Instant::now() < end,
                "{what}: not within {within:?}: {rows:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Every job succeeded once, with one object at its key; returns (lost, duplicates).
    async fn verify(&mut self, n: usize, check_events: bool) -> (usize, usize) {
        self.until(Duration::from_secs(120), "all jobs finished", |rows| {
            rows.len() == n && rows.iter().all(|r| r.state.is_terminal())
        })
        .await;
        let rows = self.rows().await;
        // Every success committed is announced: wait for its event to arrive. (A
        // stale worker's late completion is fenced out in the record and announces
        // nothing, so there is nothing else to wait for.)
        let succeeded = rows
            .iter()
            .filter(|r| r.state == renderq::job::JobState::Succeeded)
            .count();
        let end = Instant::now() + Duration::from_secs(10);
        while check_events
            && self.succeeded_events.lock().unwrap().len() < succeeded
            && Instant::now() < end
        {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let lost = rows
            .iter()
            .filter(|r| r.state != renderq::job::JobState::Succeeded)
            .count();
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .store
                .client()
                .list_objects_v2()
                .bucket("drill")
                .set_continuation_token(token)
                .send()
                .await
                .unwrap();
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        assert_eq!(keys.len(), n, "exactly one object per job");
        for r in &rows {
            assert!(
                keys.contains(r.output_key.as_ref().unwrap()),
                "{:?} has no object",
                r.id
            );
        }
        let events = self.succeeded_events.lock().unwrap().clone();
        let duplicates = events.values().filter(|&&c| c > 1).count();
        if check_events {
            assert_eq!(events.len(), n, "one succeeded event per job");
        }
        assert_eq!(duplicates, 0, "a job succeeded twice");
        assert_eq!(
            lost,
            0,
            "lost jobs: {:?}",
            rows.iter()
                .filter(|r| r.state != renderq::job::JobState::Succeeded)
                .collect::<Vec<_>>()
        );
        (lost, duplicates)
    }

    async fn stop_workers(&mut self) {
        for (id, _) in &self.workers {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid(id).to_string()])
                .status();
        }
        for (_, mut c) in self.workers.drain(..) {
            let _ = tokio::task::spawn_blocking(move || c.wait()).await;
        }
    }
}

impl Drop for Drill {
    fn drop(&mut self) {
        for (_, c) in &mut self.workers {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Kills `victim` with SIGKILL while it holds jobs; returns how long until all of
/// them were running again (or finished) under another attempt.
async fn kill_and_time_rescue(d: &mut Drill, victim: &str) -> Duration {
    d.until(Duration::from_secs(30), "victim holds jobs", |rows| {
        rows.iter().any(|r| {
            r.worker.as_deref() == Some(victim) && r.state == renderq::job::JobState::Running
        })
    })
    .await;
    let held: HashMap<_, _> = d
        .rows()
        .await
        .into_iter()
        .filter(|r| {
            r.worker.as_deref() == Some(victim) && r.state == renderq::job::JobState::Running
        })
        .map(|r| (r.id, r.attempt))
        .collect();
    d.signal(victim, "KILL");
    let killed = Instant::now();
    d.until(
        Duration::from_secs(60),
        "the victim's jobs run again",
        |rows| {
            rows.iter()
                .filter(|r| held.contains_key(&r.id))
                .all(|r| r.attempt > held[&r.id] || r.state.is_terminal())
        },
    )
    .await;
    killed.elapsed()
}

#[tokio::test]
async fn drill_kill_9_repeatedly() {
    let mut d = Drill::new(None).await;
    // Each kill costs the jobs it held an attempt: give them room for three kills.
    d.submit_with(300, None, 5);
    let lease = ["--lease-secs", "2"];
    let mut victims = vec![d.spawn_worker(&lease, 500), d.spawn_worker(&lease, 500)];
    let mut rescues = Vec::new();
    for round in 0..3 {
        let victim = victims.remove(0);
        rescues.push(kill_and_time_rescue(&mut d, &victim).await);
        victims.push(d.spawn_worker(&lease, 500));
        eprintln!("round {round}: rescued in {:?}", rescues.last().unwrap());
    }
    let (lost, dup) = d.verify(300, true).await;
    d.stop_workers().await;
    let max = rescues.iter().max().unwrap();
    eprintln!(
        "DRILL kill -9 x3 (lease 2 s): lost {lost}, duplicate successes {dup}, death to re-run at most {max:?}"
    );
    assert!(
        *max < Duration::from_secs(2) + Duration::from_secs(3),
        "rescued within the lease (plus a check interval)"
    );
}

#[tokio::test]
async fn drill_kill_9_with_the_default_lease() {
    let mut d = Drill::new(None).await;
    d.submit(40, None);
    let victim = d.spawn_worker(&[], 1000);
    let rescue = async {
        d.until(Duration::from_secs(30), "work started", |rows| {
            rows.iter()
                .any(|r| r.state == renderq::job::JobState::Running)
        })
        .await;
    };
    rescue.await;
    d.spawn_worker(&[], 50);
    let took = kill_and_time_rescue(&mut d, &victim).await;
    let (lost, dup) = d.verify(40, true).await;
    d.stop_workers().await;
    eprintln!(
        "DRILL kill -9 (default lease 15 s): lost {lost}, duplicate successes {dup}, death to re-run {took:?}"
    );
    assert!(took < Duration::from_secs(15 + 3), "{took:?}");
}

#[tokio::test]
async fn drill_sigstop_past_the_lease_then_sigcont() {
    let mut d = Drill::new(None).await;
    d.submit(40, None);
    let lease = ["--lease-secs", "2"];
    let sleeper = d.spawn_worker(&lease, 400);
    d.until(Duration::from_secs(30), "the sleeper holds jobs", |rows| {
        rows.iter().any(|r| {
            r.worker.as_deref() == Some(sleeper.as_str())
                && r.state == renderq::job::JobState::Running
        })
    })
    .await;
    let held: HashMap<_, _> = d
        .rows()
        .await
        .into_iter()
        .filter(|r| {
            r.worker.as_deref() == Some(sleeper.as_str())
                && r.state == renderq::job::JobState::Running
        })
        .map(|r| (r.id, r.attempt))
        .collect();
    d.signal(&sleeper, "STOP");
    d.spawn_worker(&lease, 50);
    // Past the lease, another worker takes the sleeper's jobs over: each runs again
    // under a later attempt (or has finished under one).
    d.until(
        Duration::from_secs(30),
        "the sleeper's jobs are taken over",
        |rows| {
            rows.iter()
                .filter(|r| held.contains_key(&r.id))
                .all(|r| r.attempt > held[&r.id])
        },
    )
    .await;
    d.signal(&sleeper, "CONT"); // wakes up and tries to complete its stale attempts
    let (lost, dup) = d.verify(40, true).await;
    d.stop_workers().await;
    eprintln!("DRILL SIGSTOP past the lease, SIGCONT: lost {lost}, duplicate successes {dup}");
}

#[tokio::test]
async fn drill_redis_flushall_then_restart() {
    let mut d = Drill::new(None).await;
    d.submit(80, None);
    d.spawn_worker(&["--lease-secs", "2"], 100);
    d.spawn_worker(&["--lease-secs", "2"], 100);
    d.until(Duration::from_secs(30), "some done", |rows| {
        rows.iter()
            .filter(|r| r.state == renderq::job::JobState::Succeeded)
            .count()
            >= 10
    })
    .await;
    sh(
        "redis-cli",
        &["-p", &d.redis.0.port.to_string(), "FLUSHALL"],
    );
    d.until(Duration::from_secs(30), "more done", |rows| {
        rows.iter()
            .filter(|r| r.state == renderq::job::JobState::Succeeded)
            .count()
            >= 40
    })
    .await;
    d.redis.0.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.redis.0.up().await; // empty: no persistence
    let (lost, dup) = d.verify(80, true).await;
    d.stop_workers().await;
    eprintln!(
        "DRILL Redis FLUSHALL then restart mid-batch: lost {lost}, duplicate successes {dup}"
    );
}

#[tokio::test]
async fn drill_object_store_down_for_30_seconds() {
    let mut d = Drill::new(None).await;
    d.submit(60, None);
    d.spawn_worker(&["--lease-secs", "2"], 100);
    d.until(Duration::from_secs(30), "some done", |rows| {
        rows.iter()
            .filter(|r| r.state == renderq::job::JobState::Succeeded)
            .count()
            >= 5
    })
    .await;
    d.s3.server.kill();
    tokio::time::sleep(Duration::from_secs(2)).await; // completions already in flight land
    let during = d
        .rows()
        .await
        .iter()
        .filter(|r| r.state == renderq::job::JobState::Succeeded)
        .count();
    tokio::time::sleep(Duration::from_secs(28)).await;
    let after = d
        .rows()
        .await
        .iter()
        .filter(|r| r.state == renderq::job::JobState::Succeeded)
        .count();
    assert_eq!(during, after, "no job succeeded while the store was down");
    d.s3.server.up().await;
    let (lost, dup) = d.verify(60, true).await;
    d.stop_workers().await;
    eprintln!(
        "DRILL object store down 30 s: lost {lost}, duplicate successes {dup}, succeeded while down 0"
    );
}

#[tokio::test]
async fn drill_sigterm_during_work() {
    let mut d = Drill::new(None).await;
    d.submit(40, None);
    let w = d.spawn_worker(&[], 300);
    d.until(Duration::from_secs(30), "work started", |rows| {
        rows.iter()
            .any(|r| r.state == renderq::job::JobState::Running)
    })
    .await;
    d.signal(&w, "TERM");
    let (_, mut child) = d.workers.remove(0);
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let drained_in = started.elapsed();
    assert!(
        d.rows()
            .await
            .iter()
            .all(|r| r.state != renderq::job::JobState::Running),
        "nothing left running"
    );
    d.spawn_worker(&[], 0);
    let (lost, dup) = d.verify(40, true).await;
    d.stop_workers().await;
    eprintln!(
        "DRILL SIGTERM during work: exit 0 after {drained_in:?}, lost {lost}, duplicate successes {dup}"
    );
}

#[tokio::test]
async fn drill_a_poison_job_fails_alone() {
    let mut d = Drill::new(None).await;
    d.submit(30, Some(7));
    d.spawn_worker(&["--backoff-secs", "0.05"], 20);
    d.until(Duration::from_secs(60), "all finished", |rows| {
        rows.len() == 30 && rows.iter().all(|r| r.state.is_terminal())
    })
    .await;
    let rows = d.rows().await;
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| r.state == renderq::job::JobState::Failed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0].prompt.contains("POISON") && failed[0].attempt == 3,
        "{failed:?}"
    );
    assert!(
        failed[0]
            .error
            .as_deref()
            .unwrap()
            .contains("poison prompt")
    );
    assert!(
        d.workers[0].1.try_wait().unwrap().is_none(),
        "the worker keeps serving"
    );
    d.stop_workers().await;
    eprintln!("DRILL poison job: 1 failed after 3 attempts, 29 succeeded, worker alive");
}

/// A Postgres cluster of the drill's own, so it can be restarted.
struct PrivatePg {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl PrivatePg {
    fn as_postgres(&self, program: &str, args: &[&str]) -> Command {
        let program = self.bin.join(program);
        let mut c = if unsafe_is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        c.args(args).stdout(Stdio::null()).stderr(Stdio::null());
        c
    }
    fn pg_ctl(&self, action: &str) {
        let opts = format!("-p {} -k /tmp -c listen_addresses=127.0.0.1", self.port);
        let dir = self.dir.display().to_string();
        let log = format!("{dir}/log");
        let ok = self
            .as_postgres(
                "pg_ctl",
                &[
                    "-D", &dir, "-o", &opts, "-l", &log, "-w", "-m", "fast", action,
                ],
            )
            .status()
            .unwrap();
        assert!(ok.success(), "pg_ctl {action}");
    }
    fn start() -> Self {
        let bin = PathBuf::from(
            std::env::var("RENDERQ_TEST_PG_BIN")
                .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()),
        );
        let dir = std::env::temp_dir().join(unique("rq-pg-"));
        std::fs::create_dir_all(&dir).unwrap();
        if unsafe_is_root() {
            sh("chown", &["postgres", &dir.display().to_string()]);
        }
        let pg = PrivatePg {
            bin,
            dir,
            port: free_port(),
        };
        let ok = pg
            .as_postgres(
                "initdb",
                &[
                    "-D",
                    &pg.dir.display().to_string(),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                ],
            )
            .status()
            .unwrap();
        assert!(ok.success(), "initdb");
        pg.pg_ctl("start");
        pg
    }
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let dir = self.dir.display().to_string();
        let _ = self
            .as_postgres("pg_ctl", &["-D", &dir, "-m", "immediate", "stop"])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unsafe_is_root() -> bool {
    // `id -u` rather than libc: the crate forbids unsafe code.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

#[tokio::test]
async fn drill_postgres_restart_mid_batch() {
    let pg = PrivatePg::start();
    let mut d = Drill::new(Some(pg.url())).await;
    d.submit(80, None);
    d.spawn_worker(&["--lease-secs", "2"], 100);
    d.spawn_worker(&["--lease-secs", "2"], 100);
    d.until(Duration::from_secs(30), "some done", |rows| {
        rows.iter()
            .filter(|r| r.state == renderq::job::JobState::Succeeded)
            .count()
            >= 10
    })
    .await;
    pg.pg_ctl("restart");
    // Events sent while the listener reconnects are lost, so they are not counted here;
    // the row and object checks still hold.
    let (lost, dup) = d.verify(80, false).await;
    d.stop_workers().await;
    eprintln!("DRILL Postgres restart mid-batch: lost {lost}, duplicate successes {dup}");
}

/// How a dead worker's job is rescued in `drill_a_job_that_kills_every_worker_fails`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RescuePath {
    /// Another worker takes the Redis entry over (XAUTOCLAIM after the lease).
    RedisTakeover,
    /// Redis lost the entry too: the reconciler finds the dead worker's running job.
    Reconciler,
    /// Database dispatch: another worker takes the row's expired lease over.
    DatabaseLease,
}

/// A job that kills each worker it runs on (kill -9 while it renders) ends `failed`
/// after `max_attempts` deaths, saying its worker died, and its batch finishes.
async fn a_job_that_kills_every_worker_fails(path: RescuePath) {
    let mut d = Drill::new(None).await;
    d.use_redis = path != RescuePath::DatabaseLease;
    d.submit_with(1, None, 2);
    let lease = ["--lease-secs", "2"];
    for attempt in 1..=2 {
        // Renders for ten minutes: it holds the job until it is killed.
        let victim = d.spawn_worker(&lease, 600_000);
        d.until(Duration::from_secs(30), "the victim runs the job", |rows| {
            rows[0].worker.as_deref() == Some(victim.as_str())
                && rows[0].state == renderq::job::JobState::Running
                && rows[0].attempt == attempt
        })
        .await;
        d.signal(&victim, "KILL");
        if path == RescuePath::Reconciler {
            sh(
                "redis-cli",
                &["-p", &d.redis.0.port.to_string(), "FLUSHALL"],
            );
        }
    }
    d.spawn_worker(&lease, 0);
    d.until(Duration::from_secs(60), "the job failed", |rows| {
        rows[0].state.is_terminal()
    })
    .await;
    let row = d.rows().await.remove(0);
    d.stop_workers().await;
    assert_eq!(
        row.state,
        renderq::job::JobState::Failed,
        "{path:?}: {row:?}"
    );
    assert_eq!(row.attempt, 2, "{path:?}: no third attempt");
    let error = row.error.unwrap_or_default();
    assert!(
        error.contains("worker stopped responding") && error.contains("attempt 2 of 2"),
        "{path:?}: {error}"
    );
    let batch = row.batch_id.unwrap();
    assert!(
        d.record.batch_finished_at(batch).await.unwrap().is_some(),
        "{path:?}: the batch is finished"
    );
}

#[tokio::test]
async fn drill_a_job_that_kills_every_worker_fails_after_redis_takeovers() {
    a_job_that_kills_every_worker_fails(RescuePath::RedisTakeover).await;
}

#[tokio::test]
async fn drill_a_job_that_kills_every_worker_fails_after_reconciler_rescues() {
    a_job_that_kills_every_worker_fails(RescuePath::Reconciler).await;
}

#[tokio::test]
async fn drill_a_job_that_kills_every_worker_fails_after_database_lease_takeovers() {
    a_job_that_kills_every_worker_fails(RescuePath::DatabaseLease).await;
}
