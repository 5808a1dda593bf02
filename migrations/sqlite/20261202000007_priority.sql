-- Job priority: a job's `priority` (default 0) is claimed before every lower one;
-- fairness between batches holds within a level.
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET priority = CAST(json_extract(spec, '$.priority') AS INTEGER)
WHERE state IN ('queued', 'retrying') AND json_extract(spec, '$.priority') IS NOT NULL;
DROP INDEX jobs_dispatch_batch_queued;
CREATE INDEX jobs_dispatch_batch_queued ON jobs (batch_id, priority DESC, id) WHERE state = 'queued';
