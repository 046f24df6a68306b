-- The worker's statements look rows up by key (event id, account id, token hash), and each
-- connection keeps the plans it makes on first use. Made while the statistics said a table
-- was nearly empty (as they do on a fresh install once autovacuum has analyzed it at its
-- first few rows), those plans scan the whole table, and go on doing so as it grows until
-- the next ANALYZE: two full scans of reset_requests and one of reset_tokens per claim. With
-- sequential scans priced out for the two statements the worker runs, the plans made inside
-- them (including those of reset_claim, reset_throttle_reason and reset_find_account, which
-- they call) use the indexes whatever the statistics say. (CREATE OR REPLACE of either keeps
-- the setting only if it repeats it.)
ALTER FUNCTION reset_find_and_claim(uuid[], text[], text[], timestamptz[], integer[], bytea[],
                                    double precision[], double precision[], integer[], boolean[])
    SET enable_seqscan = off;
ALTER FUNCTION reset_mark_sent(uuid[]) SET enable_seqscan = off;
