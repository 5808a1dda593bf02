-- renderq's record. Names here are fixed by DESIGN.md: tools outside the code query them.
CREATE SCHEMA IF NOT EXISTS renderq;

CREATE TABLE renderq.batches (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    queue         text NOT NULL,
    total         integer NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    schedule      text,
    scheduled_for timestamptz,
    CONSTRAINT batches_schedule_firing_unique UNIQUE (schedule, scheduled_for)
);
CREATE INDEX batches_created_at ON renderq.batches (created_at DESC);

CREATE TABLE renderq.jobs (
    id           uuid PRIMARY KEY,
    batch_id     uuid REFERENCES renderq.batches (id),
    queue        text NOT NULL,
    state        text NOT NULL DEFAULT 'queued'
                 CHECK (state IN ('queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled')),
    attempt      integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 3,
    spec         jsonb NOT NULL,
    model        text NOT NULL,
    seed         bigint NOT NULL,
    output_key   text,
    error        text,
    worker       text,
    run_at       timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz
);
-- A batch's progress counts its jobs by state: an index-only scan at any size.
CREATE INDEX jobs_batch_state ON renderq.jobs (batch_id, state);

CREATE VIEW renderq.batch_progress AS
SELECT b.id AS batch_id,
       b.name,
       b.created_at,
       count(j.id)::bigint                                         AS total,
       count(j.id) FILTER (WHERE j.state IN ('queued', 'retrying'))::bigint AS queued,
       count(j.id) FILTER (WHERE j.state = 'running')::bigint      AS running,
       count(j.id) FILTER (WHERE j.state = 'succeeded')::bigint    AS succeeded,
       count(j.id) FILTER (WHERE j.state = 'failed')::bigint       AS failed,
       count(j.id) FILTER (WHERE j.state = 'cancelled')::bigint    AS cancelled,
       count(j.id) = count(j.id) FILTER (WHERE j.state IN ('succeeded', 'failed', 'cancelled')) AS done
FROM renderq.batches b
LEFT JOIN renderq.jobs j ON j.batch_id = b.id
GROUP BY b.id;

-- Every state change is announced, whoever made it (worker, submit, cancel, psql).
CREATE FUNCTION renderq.notify_job_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.state IS DISTINCT FROM OLD.state THEN
        PERFORM pg_notify('renderq_events', json_build_object(
            'job_id', NEW.id, 'batch_id', NEW.batch_id, 'state', NEW.state)::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_notify_state AFTER INSERT OR UPDATE OF state ON renderq.jobs
    FOR EACH ROW EXECUTE FUNCTION renderq.notify_job_state();

CREATE TABLE renderq.workers (
    id             text PRIMARY KEY,
    host           text NOT NULL,
    device         text NOT NULL,
    models         text[] NOT NULL,
    queue          text NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    last_heartbeat timestamptz NOT NULL DEFAULT now(),
    jobs_done      bigint NOT NULL DEFAULT 0,
    stopped_at     timestamptz
);
