-- A webhook delivery outlives the worker that sends it (see the Postgres migration
-- of the same name). `webhook_taken_at` is Unix ms.
ALTER TABLE batches ADD COLUMN webhook_taken_at INTEGER;
UPDATE batches
   SET webhook_status = 'unknown: finished before deliveries were recorded'
 WHERE webhook IS NOT NULL AND webhook_status IS NULL AND finished_at IS NOT NULL;
CREATE INDEX batches_webhook_due ON batches (queue)
    WHERE webhook IS NOT NULL AND webhook_status IS NULL AND finished_at IS NOT NULL;
