-- Dispatch through the database (no REDIS_URL): a lease per job, taken with
-- FOR UPDATE SKIP LOCKED and renewed by the holder's heartbeats. The three partial
-- indexes also serve the reconciler (unfinished jobs of a queue); terminal rows, the
-- vast majority, stay out of them.
ALTER TABLE renderq.jobs ADD COLUMN lease_owner text, ADD COLUMN lease_until timestamptz;
CREATE INDEX jobs_dispatch_queued ON renderq.jobs (queue, id) WHERE state = 'queued';
CREATE INDEX jobs_dispatch_leased ON renderq.jobs (queue, lease_until) WHERE state = 'running';
CREATE INDEX jobs_dispatch_due ON renderq.jobs (queue, run_at) WHERE state = 'retrying';
