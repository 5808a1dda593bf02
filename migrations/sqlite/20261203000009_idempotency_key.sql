-- `Idempotency-Key` of `POST /v1/batches`, as on Postgres.
ALTER TABLE batches ADD COLUMN idempotency_key TEXT;
ALTER TABLE batches ADD COLUMN idempotency_hash BLOB;
CREATE UNIQUE INDEX batches_idempotency_key ON batches (idempotency_key);
