-- The state-change trigger at its earlier cost again. Keeping the attempt history had
-- brought back `json_build_object` for the payloads (half the trigger's cost in a
-- drain, which is why the payloads are concatenated) and added a second join of the
-- transition tables to every statement. The payloads are concatenated again, byte for
-- byte the same; the history's join runs only for statements that can end an attempt
-- other than in success. Claims (queued to running) and completions (running to
-- succeeded), nearly every statement in a drain, cannot: for them one scan of a
-- transition table says so.
CREATE OR REPLACE FUNCTION renderq.notify_changed_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('renderq_events', '{"job_id" : "' || n.id || '", "batch_id" : '
        || COALESCE('"' || n.batch_id || '"', 'null') || ', "state" : "' || n.state || '"}')
    FROM updated n JOIN previous o ON o.id = n.id
    WHERE n.state IS DISTINCT FROM o.state;
    IF EXISTS (SELECT 1 FROM previous WHERE state = 'running')
       AND EXISTS (SELECT 1 FROM updated WHERE state <> 'succeeded') THEN
        INSERT INTO renderq.job_attempts (job_id, attempt, worker, started_at, outcome, error)
        SELECT o.id, o.attempt, o.worker, o.started_at, n.state,
               CASE WHEN n.state IN ('retrying', 'failed') THEN n.error END
        FROM updated n JOIN previous o ON o.id = n.id
        WHERE o.state = 'running' AND n.state <> 'succeeded'
          AND (n.state <> 'running' OR n.attempt <> o.attempt);
    END IF;
    RETURN NULL;
END $$;
