-- renderq's record on SQLite (the embedded default). The same tables as on Postgres,
-- without the `renderq.` schema; times are Unix milliseconds.
CREATE TABLE batches (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    queue         TEXT NOT NULL,
    total         INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    schedule      TEXT,
    scheduled_for INTEGER,
    UNIQUE (schedule, scheduled_for)
);
CREATE INDEX batches_created_at ON batches (created_at DESC);

CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    batch_id     TEXT REFERENCES batches (id),
    queue        TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'queued'
                 CHECK (state IN ('queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled')),
    attempt      INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 3,
    spec         TEXT NOT NULL,
    model        TEXT NOT NULL,
    seed         INTEGER NOT NULL,
    output_key   TEXT,
    error        TEXT,
    worker       TEXT,
    run_at       INTEGER,
    lease_owner  TEXT,
    lease_until  INTEGER,
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER
);
CREATE INDEX jobs_batch_state ON jobs (batch_id, state);
CREATE INDEX jobs_queue_state ON jobs (queue, state, id);

CREATE VIEW batch_progress AS
SELECT b.id AS batch_id,
       b.name,
       b.created_at,
       count(j.id) AS total,
       count(CASE WHEN j.state IN ('queued', 'retrying') THEN 1 END) AS queued,
       count(CASE WHEN j.state = 'running' THEN 1 END) AS running,
       count(CASE WHEN j.state = 'succeeded' THEN 1 END) AS succeeded,
       count(CASE WHEN j.state = 'failed' THEN 1 END) AS failed,
       count(CASE WHEN j.state = 'cancelled' THEN 1 END) AS cancelled,
       count(j.id) = count(CASE WHEN j.state IN ('succeeded', 'failed', 'cancelled') THEN 1 END) AS done
FROM batches b
LEFT JOIN jobs j ON j.batch_id = b.id
GROUP BY b.id;

CREATE TABLE workers (
    id             TEXT PRIMARY KEY,
    host           TEXT NOT NULL,
    device         TEXT NOT NULL,
    models         TEXT NOT NULL,
    queue          TEXT NOT NULL,
    started_at     INTEGER NOT NULL,
    last_heartbeat INTEGER NOT NULL,
    jobs_done      INTEGER NOT NULL DEFAULT 0,
    stopped_at     INTEGER
);
