-- `Idempotency-Key` of `POST /v1/batches`: a repeated request finds the batch its key
-- made instead of making another. The hash tells a repeat from a different request.
ALTER TABLE renderq.batches ADD COLUMN idempotency_key text, ADD COLUMN idempotency_hash bytea;
CREATE UNIQUE INDEX batches_idempotency_key ON renderq.batches (idempotency_key);
