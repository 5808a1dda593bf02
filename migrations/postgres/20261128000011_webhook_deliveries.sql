-- A webhook delivery outlives the worker that sends it. A worker takes a due delivery
-- (a finished batch with a webhook and no recorded outcome) by stamping
-- `webhook_taken_at`; one whose outcome is not recorded in time (the worker died
-- mid-delivery) is taken again by another. Batches that finished before this
-- migration are not sent again: what became of their delivery was not recorded.
ALTER TABLE renderq.batches ADD COLUMN webhook_taken_at timestamptz;
UPDATE renderq.batches
   SET webhook_status = 'unknown: finished before deliveries were recorded'
 WHERE webhook IS NOT NULL AND webhook_status IS NULL AND finished_at IS NOT NULL;
CREATE INDEX batches_webhook_due ON renderq.batches (queue)
    WHERE webhook IS NOT NULL AND webhook_status IS NULL AND finished_at IS NOT NULL;
