-- Job priority: a job's `priority` (default 0) is claimed before every lower one;
-- fairness between batches holds within a level. The column lets dispatch find a
-- batch's highest waiting priority from its index without reading specs.
ALTER TABLE renderq.jobs ADD COLUMN priority integer NOT NULL DEFAULT 0;
UPDATE renderq.jobs SET priority = (spec->>'priority')::integer
WHERE state IN ('queued', 'retrying') AND (spec->>'priority')::integer <> 0;
DROP INDEX renderq.jobs_dispatch_batch_queued;
CREATE INDEX jobs_dispatch_batch_queued ON renderq.jobs (batch_id, priority DESC, id) WHERE state = 'queued';
