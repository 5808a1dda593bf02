-- Every attempt that ended other than in success: the job's history, which the job's
-- own row (its latest attempt) cannot keep. A succeeded attempt writes nothing here,
-- so the common path costs no extra row. Filled by the trigger below, whoever moved
-- the job (a worker, the reconciler, a cancel, psql).
CREATE TABLE renderq.job_attempts (
    job_id     uuid NOT NULL REFERENCES renderq.jobs (id) ON DELETE CASCADE,
    attempt    integer NOT NULL,
    worker     text,
    started_at timestamptz,
    ended_at   timestamptz NOT NULL DEFAULT now(),
    -- The state the attempt left the job in: retrying, failed, queued (given back by
    -- a draining worker or requeued when its worker went silent), cancelled, or
    -- running (taken over from a silent worker).
    outcome    text NOT NULL,
    error      text
);
CREATE INDEX job_attempts_job ON renderq.job_attempts (job_id, attempt);

-- The announcing trigger also keeps the history: one pass over the statement's
-- transition tables, as before, plus an insert only for running attempts that ended
-- without success.
CREATE OR REPLACE FUNCTION renderq.notify_changed_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('renderq_events', json_build_object(
        'job_id', n.id, 'batch_id', n.batch_id, 'state', n.state)::text)
    FROM updated n JOIN previous o ON o.id = n.id
    WHERE n.state IS DISTINCT FROM o.state;
    INSERT INTO renderq.job_attempts (job_id, attempt, worker, started_at, outcome, error)
    SELECT o.id, o.attempt, o.worker, o.started_at, n.state,
           CASE WHEN n.state IN ('retrying', 'failed') THEN n.error END
    FROM updated n JOIN previous o ON o.id = n.id
    WHERE o.state = 'running' AND n.state <> 'succeeded'
      AND (n.state <> 'running' OR n.attempt <> o.attempt);
    RETURN NULL;
END $$;
