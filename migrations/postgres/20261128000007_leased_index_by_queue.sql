-- The running-jobs index serves statements that name a queue (the reconciler, and
-- lease takeover under database dispatch). `queue IS NOT NULL` (always true) is
-- implied by `queue = $1` but not by a lookup by id, so a statement that finds jobs
-- by id can never choose this index on a stale estimate of ~0 running rows: with it,
-- every completion chunk of a drain walked all running entries and the dead ones
-- (see src/db/postgres.rs, where such statements also avoid a state constant).
DROP INDEX renderq.jobs_dispatch_leased;
CREATE INDEX jobs_dispatch_leased ON renderq.jobs (queue, lease_until)
    WHERE state = 'running' AND queue IS NOT NULL;
