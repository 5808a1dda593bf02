-- Every attempt that ended other than in success, as on Postgres (times in Unix
-- milliseconds); a succeeded attempt writes nothing here.
CREATE TABLE job_attempts (
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt    INTEGER NOT NULL,
    worker     TEXT,
    started_at INTEGER,
    ended_at   INTEGER NOT NULL,
    outcome    TEXT NOT NULL,
    error      TEXT
);
CREATE INDEX job_attempts_job ON job_attempts (job_id, attempt);

CREATE TRIGGER jobs_attempt_ended AFTER UPDATE OF state, attempt ON jobs
    WHEN OLD.state = 'running' AND NEW.state <> 'succeeded'
     AND (NEW.state <> 'running' OR NEW.attempt <> OLD.attempt)
BEGIN
    INSERT INTO job_attempts (job_id, attempt, worker, started_at, ended_at, outcome, error)
    VALUES (OLD.id, OLD.attempt, OLD.worker, OLD.started_at,
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), NEW.state,
            CASE WHEN NEW.state IN ('retrying', 'failed') THEN NEW.error END);
END;
