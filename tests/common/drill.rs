//! Servers a test owns (Redis, s3s-fs, a Postgres cluster), so it may kill and restart
//! them, and the drill: a database, a queue, those servers and `renderq worker`
//! processes, with the checks every drill ends with.

use std::{
    collections::HashMap,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use renderq::{backend::Database, db::Record, store::S3Store};

use super::*;

pub const ACCESS: &str = "drill-access";
pub const SECRET: &str = "drill-secret-key";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn wait_port(port: u16) {
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

pub fn sh(cmd: &str, args: &[&str]) {
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
pub struct Server {
    pub port: u16,
    pub command: Box<dyn Fn(u16) -> Command + Send + Sync>,
    pub child: Option<Child>,
}

impl Server {
    pub async fn start(command: impl Fn(u16) -> Command + Send + Sync + 'static) -> Self {
        Self::start_on(free_port(), command).await
    }
    pub async fn start_on(
        port: u16,
        command: impl Fn(u16) -> Command + Send + Sync + 'static,
    ) -> Self {
        let mut s = Server {
            port,
            command: Box::new(command),
            child: None,
        };
        s.up().await;
        s
    }
    pub async fn up(&mut self) {
        let mut command = (self.command)(self.port);
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        self.child = Some(child);
        wait_port(self.port).await;
    }
    pub fn kill(&mut self) {
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
pub struct PrivateRedis(pub Server);

impl PrivateRedis {
    pub async fn start() -> Self {
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
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.0.port)
    }
}

/// A master, its replica and one sentinel watching them (quorum 1, down after 1 s),
/// the drill's own. Killing the master makes the sentinel promote the replica.
pub struct PrivateSentinel {
    pub sentinel: Server,
    pub replica: Server,
    pub master: Server,
    pub _dir: tempfile::TempDir,
}

impl PrivateSentinel {
    pub const MASTER_NAME: &str = "drill";

    pub async fn start() -> Self {
        // The master writes an RDB file to bring its replica up to date: into the
        // drill's directory, not the working one.
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_path_buf();
        let plain = move |port: u16| {
            let mut c = Command::new("redis-server");
            c.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&data)
                .args(["--dbfilename", &format!("dump-{port}.rdb")]);
            c
        };
        let master = Server::start(plain.clone()).await;
        let master_port = master.port.to_string();
        let replica = Server::start(move |port| {
            let mut c = plain(port);
            c.args(["--replicaof", "127.0.0.1", &master_port]);
            c
        })
        .await;
        let (root, master_port) = (dir.path().to_path_buf(), master.port);
        let sentinel = Server::start(move |port| {
            let conf = root.join("sentinel.conf");
            let name = Self::MASTER_NAME;
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {name} 127.0.0.1 {master_port} 1\n\
                     sentinel down-after-milliseconds {name} 1000\n\
                     sentinel failover-timeout {name} 5000\n",
                    root.display()
                ),
            )
            .unwrap();
            let mut c = Command::new("redis-server");
            c.arg(&conf).arg("--sentinel");
            c
        })
        .await;
        let s = PrivateSentinel {
            sentinel,
            replica,
            master,
            _dir: dir,
        };
        // The sentinel knows the replica once it has asked the master (every 10 s at
        // first, sooner after it connects); a failover before then has nowhere to go.
        let end = Instant::now() + Duration::from_secs(30);
        while s.replicas_known() == 0 {
            assert!(Instant::now() < end, "the sentinel never saw the replica");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s
    }

    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://127.0.0.1:{}/{}",
            self.sentinel.port,
            Self::MASTER_NAME
        )
    }

    fn ask(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.sentinel.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn replicas_known(&self) -> usize {
        self.ask(&["SENTINEL", "REPLICAS", Self::MASTER_NAME])
            .lines()
            .filter(|l| *l == "ip")
            .count()
    }

    /// The replication offset a node reports (`master_repl_offset`).
    pub fn offset(port: u16) -> u64 {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "INFO", "replication"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("master_repl_offset:"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The port the sentinel names as the master's now.
    pub fn master_port(&self) -> u16 {
        let reply = self.ask(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::MASTER_NAME]);
        reply
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// A Redis Cluster of the drill's own: three masters, each with a replica (node
/// timeout 1 s), so killing a master makes the cluster promote its replica.
pub struct PrivateCluster {
    pub nodes: Vec<Server>,
    pub _dir: tempfile::TempDir,
}

/// A free port whose cluster bus port (port + 10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = 20_000 + (rand_u16() % 20_000);
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

fn rand_u16() -> u16 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u16::from_le_bytes([b[0], b[1]])
}

impl PrivateCluster {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let root = dir.path().to_path_buf();
            let node = Server::start_on(free_cluster_port(), move |port| {
                let mut c = Command::new("redis-server");
                c.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no"])
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                    // With a 1 s node timeout the replica's data counts as stale after
                    // 10 s without writes; let it fail over anyway.
                    .args(["--cluster-replica-validity-factor", "0"])
                    .arg("--cluster-config-file")
                    .arg(root.join(format!("nodes-{port}.conf")))
                    .arg("--dir")
                    .arg(&root)
                    .args(["--dbfilename", &format!("dump-{port}.rdb")]);
                c
            })
            .await;
            nodes.push(node);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        sh("redis-cli", &args);
        let c = PrivateCluster { nodes, _dir: dir };
        let end = Instant::now() + Duration::from_secs(30);
        while !c
            .ask(c.nodes[0].port, &["CLUSTER", "INFO"])
            .contains("cluster_state:ok")
        {
            assert!(Instant::now() < end, "the cluster never came up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c
    }

    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes[..3]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    fn ask(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The port of the master that serves `key`'s slot now, as a live node sees it.
    pub fn master_of(&self, key: &str) -> u16 {
        let alive = self.nodes.iter().find(|n| n.child.is_some()).unwrap().port;
        let slot: u16 = self
            .ask(alive, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap();
        for line in self.ask(alive, &["CLUSTER", "NODES"]).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let serves = f[8..].iter().any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                match (a.parse::<u16>(), b.parse::<u16>()) {
                    (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let addr = f[1].split('@').next().unwrap();
                return addr.rsplit(':').next().unwrap().parse().unwrap();
            }
        }
        0
    }

    /// CLUSTER NODES as a live node sees it.
    pub fn nodes_seen(&self) -> String {
        let alive = self.nodes.iter().find(|n| n.child.is_some()).unwrap().port;
        self.ask(alive, &["CLUSTER", "NODES"])
    }

    pub fn node(&mut self, port: u16) -> &mut Server {
        self.nodes.iter_mut().find(|n| n.port == port).unwrap()
    }
}

/// An s3s-fs server of the drill's own, on a directory that survives restarts (the
/// server is declared first, so it stops before the directory goes).
pub struct PrivateS3 {
    pub server: Server,
    pub _dir: tempfile::TempDir,
}

impl PrivateS3 {
    pub async fn start() -> Self {
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
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port)
    }
}

/// One drill: a database, a queue, a Redis, an S3 server with a bucket, workers.
pub struct Drill {
    pub db_url: String,
    pub record: Arc<dyn Record>,
    pub queue: String,
    pub redis: PrivateRedis,
    /// The `REDIS_URL` workers get, when not `redis`'s (a Sentinel's, say).
    pub redis_url: Option<String>,
    pub s3: PrivateS3,
    pub store: S3Store,
    pub workers: Vec<(String, Child)>,
    /// Workers dispatch through Redis; false: through the Postgres record.
    pub use_redis: bool,
    /// `succeeded` events seen per job (NOTIFY renderq_events).
    pub succeeded_events: Arc<Mutex<HashMap<String, usize>>>,
    /// The output of every `renderq` the drill ran, shown when the drill fails.
    pub logs: tempfile::TempDir,
    log_seq: std::sync::atomic::AtomicUsize,
}

impl Drill {
    /// What the drill's processes said, the last lines of each: shown when it fails.
    fn show_logs(&self) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.logs.path())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!("--- {} (last {} lines)", file.display(), tail.len());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

impl Drill {
    pub async fn new(db_url: Option<String>) -> Drill {
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
            redis_url: None,
            s3,
            store,
            workers: Vec::new(),
            use_redis: true,
            succeeded_events,
            logs: tempfile::tempdir().unwrap(),
            log_seq: Default::default(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_renderq"));
        c.args(args).env("DATABASE_URL", &self.db_url);
        if self.use_redis {
            let url = self.redis_url.clone().unwrap_or_else(|| self.redis.url());
            c.env("REDIS_URL", url);
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
            .env("RENDERQ_LOG", "renderq=info");
        let n = self
            .log_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{n:03}-{}.log", args.first().unwrap_or(&"renderq"));
        let log = std::fs::File::create(self.logs.path().join(name)).unwrap();
        c.stdout(log.try_clone().unwrap()).stderr(log);
        c
    }

    /// Submits `n` noop jobs through the real CLI.
    pub fn submit(&self, n: usize, poison: Option<usize>) {
        self.submit_with(n, poison, 3)
    }

    pub fn submit_with(&self, n: usize, poison: Option<usize>, max_attempts: i32) {
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

    pub fn spawn_worker(&mut self, extra: &[&str], delay_ms: u64) -> String {
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

    pub fn pid(&self, id: &str) -> u32 {
        self.workers.iter().find(|(w, _)| w == id).unwrap().1.id()
    }

    pub fn signal(&self, id: &str, sig: &str) {
        sh("kill", &[&format!("-{sig}"), &self.pid(id).to_string()]);
    }

    pub async fn rows(&self) -> Vec<renderq::db::JobRow> {
        loop {
            match self.record.jobs_of_queue(&self.queue).await {
                Ok(rows) => return rows,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await, // Postgres restarting
            }
        }
    }

    /// Waits until `pred` holds for the rows.
    pub async fn until(
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
    pub async fn verify(&mut self, n: usize, check_events: bool) -> (usize, usize) {
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

    pub async fn stop_workers(&mut self) {
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
        if std::thread::panicking() {
            self.show_logs();
        }
        for (_, c) in &mut self.workers {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A Postgres cluster of the drill's own, so it can be restarted.
pub struct PrivatePg {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub port: u16,
}

impl PrivatePg {
    pub fn as_postgres(&self, program: &str, args: &[&str]) -> Command {
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
    pub fn pg_ctl(&self, action: &str) {
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
    pub fn start() -> Self {
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
    pub fn url(&self) -> String {
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

pub fn unsafe_is_root() -> bool {
    // `id -u` rather than libc: the crate forbids unsafe code.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}
