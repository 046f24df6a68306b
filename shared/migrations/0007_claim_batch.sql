-- The account a request's `id` names, by the worker's one rule: the account with that id,
-- else the only account with that email (case-insensitively). No row: no such account. A row
-- with a NULL id: `matches` accounts (counted up to 3) share the email and none has it as id.
CREATE OR REPLACE FUNCTION reset_find_account(p_id text)
RETURNS TABLE (id text, email text, display_name text, locale text, matches integer)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_first record;
    v_row   record;
BEGIN
    matches := 0;
    FOR v_row IN
        SELECT a.id, a.email, a.display_name, a.locale FROM accounts a
         WHERE a.id = p_id OR lower(a.email) = lower(p_id)
         ORDER BY (a.id = p_id) DESC
         LIMIT 3
    LOOP
        matches := matches + 1;
        IF matches = 1 THEN
            v_first := v_row;
            EXIT WHEN v_row.id = p_id;
        END IF;
    END LOOP;
    IF matches = 0 THEN
        RETURN;
    END IF;
    IF matches = 1 THEN
        id := v_first.id;
        email := v_first.email;
        display_name := v_first.display_name;
        locale := v_first.locale;
    END IF;
    RETURN NEXT;
END
$$;

-- Looks up and claims a batch of events in one statement, so in one transaction and one
-- commit: per event, the lookup above and then `reset_claim` (migration 0004), whose answer
-- is returned, or 'not_found' / 'ambiguous'. Rows come back in input order, numbered by `ord`.
--
-- Every account's lock is taken before any claim, in one global order (by lock key): two
-- batches sharing accounts then wait for each other instead of deadlocking. `reset_claim`
-- takes its account's lock again, which a transaction already holding it gets at once.
-- Events of one account in one batch are claimed in input order, as separate calls would be.
CREATE OR REPLACE FUNCTION reset_find_and_claim(
    p_event_ids     uuid[],
    p_ids           text[],
    p_request_ids   text[],
    p_requested_at  timestamptz[],
    p_attempts      integer[],
    p_token_hashes  bytea[],
    p_ttl_secs      double precision[],
    p_cooldown_secs double precision[],
    p_daily_limits  integer[],
    p_again         boolean[]
) RETURNS TABLE (
    ord integer, answer text, id text, email text, display_name text, locale text,
    matches integer
)
LANGUAGE plpgsql AS $$
DECLARE
    v_found   record;
    v_ids     text[] := '{}';
    v_emails  text[] := '{}';
    v_names   text[] := '{}';
    v_locales text[] := '{}';
    v_matches integer[] := '{}';
    v_key     bigint;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_event_ids, 1), 0) LOOP
        SELECT f.id, f.email, f.display_name, f.locale, f.matches INTO v_found
          FROM reset_find_account(p_ids[i]) f;
        v_ids[i] := v_found.id;
        v_emails[i] := v_found.email;
        v_names[i] := v_found.display_name;
        v_locales[i] := v_found.locale;
        v_matches[i] := coalesce(v_found.matches, 0);
    END LOOP;

    FOR v_key IN
        SELECT DISTINCT hashtextextended(a, 7041) FROM unnest(v_ids) a WHERE a IS NOT NULL
         ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(v_key);
    END LOOP;

    FOR i IN 1 .. coalesce(array_length(p_event_ids, 1), 0) LOOP
        ord := i;
        id := v_ids[i];
        email := v_emails[i];
        display_name := v_names[i];
        locale := v_locales[i];
        matches := v_matches[i];
        IF v_ids[i] IS NOT NULL THEN
            answer := reset_claim(p_event_ids[i], v_ids[i], p_request_ids[i], p_requested_at[i],
                                  p_attempts[i], p_token_hashes[i], p_ttl_secs[i],
                                  p_cooldown_secs[i], p_daily_limits[i], p_again[i]);
        ELSIF v_matches[i] = 0 THEN
            answer := 'not_found';
        ELSE
            answer := 'ambiguous';
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
