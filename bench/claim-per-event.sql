-- The simpler batched claim, for measuring against the set-based one (bench/run, BENCH_DB_SQL):
-- still one statement per batch, but each event goes through reset_claim in input order.
-- Same lookup, same global lock order; the per-event rules are reset_claim's.
CREATE OR REPLACE FUNCTION reset_find_and_claim(p_event_ids uuid[], p_ids text[], p_request_ids text[], p_requested_at timestamp with time zone[], p_attempts integer[], p_token_hashes bytea[], p_ttl_secs double precision[], p_cooldown_secs double precision[], p_max_cooldown_secs double precision[], p_again boolean[], p_holders uuid[], p_lease_secs double precision) RETURNS TABLE(ord integer, answer text, done text, busy_for double precision, id text, email text, display_name text, locale text, matches integer)
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
DECLARE
    v_n       integer := coalesce(array_length(p_event_ids, 1), 0);
    v_ids     text[];
    v_emails  text[];
    v_names   text[];
    v_locales text[];
    v_matches integer[];
    v_key     bigint;
BEGIN
    IF v_n = 0 THEN
        RETURN;
    END IF;
    SELECT array_agg(f.id ORDER BY f.ord), array_agg(f.email ORDER BY f.ord),
           array_agg(f.display_name ORDER BY f.ord), array_agg(f.locale ORDER BY f.ord),
           array_agg(f.matches ORDER BY f.ord)
      INTO v_ids, v_emails, v_names, v_locales, v_matches
      FROM reset_find_accounts(p_ids) f;

    FOR v_key IN
        SELECT DISTINCT hashtextextended(a, 7041) FROM unnest(v_ids) a WHERE a IS NOT NULL
         ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(v_key);
    END LOOP;

    FOR i IN 1 .. v_n LOOP
        ord := i;
        id := v_ids[i];
        email := v_emails[i];
        display_name := v_names[i];
        locale := v_locales[i];
        matches := v_matches[i];
        done := NULL;
        busy_for := NULL;
        IF v_ids[i] IS NULL THEN
            answer := CASE WHEN v_matches[i] = 0 THEN 'not_found' ELSE 'ambiguous' END;
        ELSE
            SELECT c.answer, c.done, c.busy_for INTO answer, done, busy_for
              FROM reset_claim(p_event_ids[i], v_ids[i], p_request_ids[i], p_requested_at[i],
                               p_attempts[i], p_token_hashes[i], p_ttl_secs[i],
                               p_cooldown_secs[i], p_max_cooldown_secs[i], p_again[i],
                               p_holders[i], p_lease_secs) c;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
