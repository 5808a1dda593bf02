-- The backlog by state (the `renderq_queue_jobs` metric, autoscalers polling the
-- record) counts a queue's running jobs; without this index that count read the
-- whole table. Running jobs are few (the fleet's concurrency), so the index is small.
CREATE INDEX jobs_running_by_queue ON renderq.jobs (queue) WHERE state = 'running';
