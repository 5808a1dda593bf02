-- When a batch's last job became terminal; set once, which is what makes its
-- `done` notification fire exactly once. `renderq retry` clears it.
ALTER TABLE renderq.batches ADD COLUMN finished_at timestamptz;
