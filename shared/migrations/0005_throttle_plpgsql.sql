-- reset_throttle_reason as in 0004, in PL/pgSQL. A LANGUAGE sql function with a FROM clause
-- cannot be inlined, so every call from reset_claim parsed and planned its query anew; a
-- PL/pgSQL function keeps the plan for the life of the connection.
CREATE OR REPLACE FUNCTION reset_throttle_reason(
    p_account_id    text,
    p_event_id      uuid,
    p_cooldown_secs double precision,
    p_daily_limit   integer
) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
        SELECT CASE
            WHEN count(*) FILTER (WHERE claimed_at > now() - make_interval(secs => p_cooldown_secs)) > 0
                THEN 'an email went to this account less than RESET_COOLDOWN ago'
            WHEN count(*) >= p_daily_limit
                THEN 'RESET_DAILY_LIMIT reached for this account'
        END
        FROM reset_requests
        WHERE account_id = p_account_id AND event_id <> p_event_id AND kind = 'reset'
          AND outcome IN ('pending', 'sent')
          AND claimed_at > now() - interval '24 hours'
    );
END
$$;
