-- The running-jobs index now holds only jobs leased through the database
-- (`lease_owner` is set by database dispatch and never under Redis dispatch, where the
-- stream holds the lease). A claim under Redis dispatch adds one index entry less: two
-- instead of three, worth ~8% of a no-op drain. The reconciler finds running jobs
-- through `jobs_batch_state` instead (see `unfinished` in src/db/postgres.rs); lease
-- takeover under database dispatch names `lease_owner IS NOT NULL`. A lookup by id
-- still cannot choose this index, as migration 7 requires: it never implies the
-- predicate.
DROP INDEX IF EXISTS renderq.jobs_dispatch_leased;
CREATE INDEX jobs_dispatch_leased ON renderq.jobs (queue, lease_until)
    WHERE state = 'running' AND lease_owner IS NOT NULL;
