-- When a batch's last job became terminal (Unix ms); `renderq retry` clears it.
ALTER TABLE batches ADD COLUMN finished_at INTEGER;
