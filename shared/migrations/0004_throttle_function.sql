-- The throttling rule in one place: the claim uses it, and so does `worker replay` when it
-- says what the worker would do now. Returns why a reset mail to the account would be
-- throttled now (not counting the event itself), or NULL.
CREATE OR REPLACE FUNCTION reset_throttle_reason(
    p_account_id    text,
    p_event_id      uuid,
    p_cooldown_secs double precision,
    p_daily_limit   integer
) RETURNS text
LANGUAGE sql STABLE AS $$
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
$$;

-- reset_claim as in 0003, taking its throttle decision from the function above.
CREATE OR REPLACE FUNCTION reset_claim(
    p_event_id      uuid,
    p_account_id    text,
    p_request_id    text,
    p_requested_at  timestamptz,
    p_attempt       integer,
    p_token_hash    bytea,
    p_ttl_secs      double precision,
    p_cooldown_secs double precision,
    p_daily_limit   integer,
    p_again         boolean
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_existing text;
    v_why      text;
BEGIN
    -- Serialises claims for one account across all workers: a burst yields one email.
    PERFORM pg_advisory_xact_lock(hashtextextended(p_account_id, 7041));

    SELECT outcome INTO v_existing FROM reset_requests WHERE event_id = p_event_id FOR UPDATE;
    IF v_existing IN ('sent', 'no_account', 'throttled', 'failed')
       AND (NOT p_again OR v_existing = 'sent') THEN
        RETURN 'done:' || v_existing;
    END IF;

    v_why := reset_throttle_reason(p_account_id, p_event_id, p_cooldown_secs, p_daily_limit);

    IF v_why IS NOT NULL THEN
        INSERT INTO reset_requests
            (event_id, account_id, outcome, attempts, last_error, request_id, requested_at, kind)
        VALUES (p_event_id, p_account_id, 'throttled', p_attempt, v_why, p_request_id,
                p_requested_at, 'reset')
        ON CONFLICT (event_id) DO UPDATE
        SET account_id = EXCLUDED.account_id, outcome = 'throttled',
            attempts = GREATEST(reset_requests.attempts, EXCLUDED.attempts),
            last_error = EXCLUDED.last_error, updated_at = now();
        RETURN 'throttled';
    END IF;

    UPDATE reset_tokens SET invalidated_at = now()
     WHERE account_id = p_account_id AND used_at IS NULL AND invalidated_at IS NULL;
    INSERT INTO reset_tokens (token_hash, account_id, event_id, expires_at, password_fingerprint)
    VALUES (p_token_hash, p_account_id, p_event_id, now() + make_interval(secs => p_ttl_secs),
            (SELECT sha256(convert_to(coalesce(password_hash, ''), 'UTF8'))
               FROM accounts WHERE id = p_account_id));
    INSERT INTO reset_requests
        (event_id, account_id, outcome, attempts, request_id, requested_at, claimed_at, kind)
    VALUES (p_event_id, p_account_id, 'pending', p_attempt, p_request_id, p_requested_at, now(),
            'reset')
    ON CONFLICT (event_id) DO UPDATE
    SET account_id = EXCLUDED.account_id, outcome = 'pending',
        attempts = GREATEST(reset_requests.attempts, EXCLUDED.attempts),
        claimed_at = COALESCE(reset_requests.claimed_at, EXCLUDED.claimed_at),
        updated_at = now();
    RETURN 'proceed';
END
$$;
