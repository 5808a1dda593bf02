ALTER TABLE batches ADD COLUMN webhook TEXT;
ALTER TABLE batches ADD COLUMN webhook_status TEXT;
