-- Records of mails sent and the next batch of claims in one statement, so in one round trip
-- and one commit: under load a worker always has both queued, and each statement's own cost
-- (the round trip, the statement, the commit's WAL flush) was paid twice per batch. Sent
-- records go first, so a redelivered copy of an event in the same batch sees it sent.
CREATE OR REPLACE FUNCTION reset_mark_sent_and_claim(
    p_sent_ids      uuid[],
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
BEGIN
    IF coalesce(array_length(p_sent_ids, 1), 0) > 0 THEN
        PERFORM reset_mark_sent(p_sent_ids);
    END IF;
    RETURN QUERY
        SELECT * FROM reset_find_and_claim(p_event_ids, p_ids, p_request_ids, p_requested_at,
                                           p_attempts, p_token_hashes, p_ttl_secs,
                                           p_cooldown_secs, p_daily_limits, p_again);
END
$$;
