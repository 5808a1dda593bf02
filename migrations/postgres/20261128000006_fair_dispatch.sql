-- Dispatch through the database takes work batch by batch (a share for each batch
-- with queued jobs), so a small batch is not starved by a big one submitted before it.
-- This index finds a batch's next queued jobs in id order without sorting.
CREATE INDEX jobs_dispatch_batch_queued ON renderq.jobs (batch_id, id) WHERE state = 'queued';
