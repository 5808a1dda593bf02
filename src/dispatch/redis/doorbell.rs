//! The doorbell: `renderq:{<queue>}:doorbell`, a short stream the scripts that open a
//! batch stream or lane add to (`lane.lua`). A blocking XREADGROUP wakes only for the
//! streams it names, so without it an idle worker would have to look again and again
//! for streams made since it started waiting. Instead each worker keeps one blocking
//! XREAD on the doorbell; a ring unblocks its waiting read (CLIENT UNBLOCK), which then
//! reads the streams afresh. An idle worker so sends Redis about one command a second.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redis::streams::StreamReadReply;

use super::Connection;

/// How long a listener's XREAD waits before asking again.
const LISTEN_BLOCK_MS: u64 = 10_000;
/// The list of streams is read again this often even without a ring (a ring lost to a
/// reconnect, a stream deleted and made again).
const STREAMS_FRESH: Duration = Duration::from_secs(60);

/// The blocking connection's id when Redis refuses CLIENT: rings cannot end a wait.
pub(super) const CANNOT_UNBLOCK: i64 = -1;
/// How long a read waits at once when rings cannot end it.
pub(super) const POLL_MS: u64 = 100;

/// What a dispatch knows of its doorbell.
pub(super) struct Bell {
    /// Rings heard so far.
    rings: AtomicU64,
    /// Whether the listener hears every ring from now on; until then nothing is
    /// cached and every fetch reads fairly.
    listening: AtomicBool,
    /// Redis's id of the connection blocking reads wait on (0: not known).
    blocked: AtomicI64,
    /// The rings when a fetch last came back empty (`u64::MAX`: it did not).
    quiet_at: AtomicU64,
    /// The streams blocking reads wait on, with the rings and time they were read at.
    streams: Mutex<Option<(Vec<String>, u64, Instant)>>,
    /// The task listening for rings, started by the first read.
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Default for Bell {
    fn default() -> Self {
        Bell {
            rings: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            blocked: AtomicI64::new(0),
            quiet_at: AtomicU64::new(u64::MAX),
            streams: Mutex::new(None),
            listener: Mutex::new(None),
        }
    }
}

impl Bell {
    pub(super) fn rings(&self) -> u64 {
        self.rings.load(Ordering::Acquire)
    }

    /// Whether the last fetch found nothing and nothing rang since: the next can wait
    /// at once (a blocking read returns what arrived meanwhile on the streams it names).
    pub(super) fn quiet(&self) -> bool {
        self.can_unblock()
            && self.listening()
            && self.quiet_at.load(Ordering::Acquire) == self.rings()
    }

    /// Whether a ring can end a blocking read (Redis lets renderq use CLIENT).
    pub(super) fn can_unblock(&self) -> bool {
        self.blocked_client() != CANNOT_UNBLOCK
    }

    fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// A fetch came back empty (`Some(rings)` it saw) or with work (`None`).
    pub(super) fn set_quiet(&self, rings: Option<u64>) {
        self.quiet_at
            .store(rings.unwrap_or(u64::MAX), Ordering::Release);
    }

    /// The streams as last read, if no ring came since and they are fresh.
    pub(super) fn streams(&self) -> Option<Vec<String>> {
        let cached = self.streams.lock().unwrap();
        if !self.listening() || !self.can_unblock() {
            return None;
        }
        match &*cached {
            Some((streams, rings, at))
                if *rings == self.rings() && at.elapsed() < STREAMS_FRESH =>
            {
                Some(streams.clone())
            }
            _ => None,
        }
    }

    pub(super) fn keep_streams(&self, streams: Vec<String>, rings: u64) {
        *self.streams.lock().unwrap() = Some((streams, rings, Instant::now()));
    }

    pub(super) fn forget_streams(&self) {
        *self.streams.lock().unwrap() = None;
    }

    pub(super) fn blocked_client(&self) -> i64 {
        self.blocked.load(Ordering::Acquire)
    }

    pub(super) fn set_blocked_client(&self, id: i64) {
        self.blocked.store(id, Ordering::Release);
    }

    /// Starts the listener unless it runs: `listen` on its own connection, unblocking
    /// through `unblock`.
    pub(super) fn start(
        self: &Arc<Self>,
        doorbell: &str,
        listen: impl std::future::Future<Output = Option<(Connection, Connection)>> + Send + 'static,
    ) {
        let mut listener = self.listener.lock().unwrap();
        // A listener that could not connect (Redis down at the time) is started again.
        if listener.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        let (bell, key) = (self.clone(), doorbell.to_string());
        *listener = Some(tokio::spawn(async move {
            if let Some((con, unblock)) = listen.await {
                bell.listen(con, unblock, key).await;
            }
        }));
    }

    /// Stops the listener.
    pub(super) fn stop(&self) {
        if let Some(task) = self.listener.lock().unwrap().take() {
            task.abort();
        }
    }

    async fn listen(&self, mut con: Connection, mut unblock: Connection, key: String) {
        // From the last ring there is: streams opened before are in the first read.
        let mut last = "0-0".to_string();
        loop {
            let newest: redis::RedisResult<redis::streams::StreamRangeReply> =
                redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut con)
                    .await;
            match newest {
                Ok(r) => {
                    if let Some(e) = r.ids.first() {
                        last = e.id.clone();
                    }
                    self.listening.store(true, Ordering::Release);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
        loop {
            let reply: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(100)
                .arg("BLOCK")
                .arg(LISTEN_BLOCK_MS)
                .arg("STREAMS")
                .arg(&key)
                .arg(&last)
                .query_async(&mut con)
                .await;
            match reply {
                Ok(Some(reply)) => {
                    for e in reply.keys.iter().flat_map(|k| &k.ids) {
                        last = e.id.clone();
                    }
                    self.rings.fetch_add(1, Ordering::AcqRel);
                    let id = self.blocked_client();
                    if id > 0 {
                        let _ = unblock
                            .on_server_of::<i64>(&key, redis::cmd("CLIENT").arg("UNBLOCK").arg(id))
                            .await;
                    }
                }
                Ok(None) => {}
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }
}
