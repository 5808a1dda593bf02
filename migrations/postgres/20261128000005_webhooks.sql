-- A batch's webhook (given at submit) and what became of its delivery.
ALTER TABLE renderq.batches ADD COLUMN webhook text, ADD COLUMN webhook_status text;
