-- The per-account limit was a cooldown plus a daily cap. Anyone who knows an address could
-- spend the cap (five requests) and keep its owner from any reset mail for a day. Now there
-- is no cap: the cooldown after a mail doubles with each mail the account had in the last
-- 24 hours, from RESET_COOLDOWN up to RESET_COOLDOWN_MAX (an hour by default). An owner waits
-- at most that long for a mail, whatever others send, and one address gets at most about
-- 24 h / RESET_COOLDOWN_MAX mails a day more than the few it takes the cooldown to grow.
DROP FUNCTION reset_mark_sent_and_claim(uuid[], uuid[], text[], text[], timestamp with time zone[], integer[], bytea[], double precision[], double precision[], integer[], boolean[], uuid[], double precision);
DROP FUNCTION reset_find_and_claim(uuid[], text[], text[], timestamp with time zone[], integer[], bytea[], double precision[], double precision[], integer[], boolean[], uuid[], double precision);
DROP FUNCTION reset_claim(uuid, text, text, timestamp with time zone, integer, bytea, double precision, double precision, integer, boolean, uuid, double precision);
DROP FUNCTION reset_throttle_reason(text, uuid, double precision, integer);
DROP FUNCTION reset_throttle_reasons(text[], uuid[], double precision[], integer[]);

-- Why a reset mail to each event's account would be throttled now, not counting that event
-- itself, or NULL: after the n-th mail decided on in the last 24 hours, the next waits
-- RESET_COOLDOWN × 2^(n-1), never more than RESET_COOLDOWN_MAX.
CREATE FUNCTION reset_throttle_reasons(p_account_ids text[], p_event_ids uuid[], p_cooldown_secs double precision[], p_max_cooldown_secs double precision[]) RETURNS TABLE(ord bigint, reason text)
    LANGUAGE sql STABLE
    AS $$
    SELECT u.ord,
           CASE WHEN t.mails > 0
                 AND t.last > now() - make_interval(secs => least(
                         u.cooldown_secs * power(2::double precision, least(t.mails - 1, 40)),
                         u.max_cooldown_secs))
                    THEN 'the account had an email less than its cooldown ago (RESET_COOLDOWN, '
                         || 'doubling with each email in 24 hours up to RESET_COOLDOWN_MAX)'
           END
      FROM unnest(p_account_ids, p_event_ids, p_cooldown_secs, p_max_cooldown_secs)
           WITH ORDINALITY AS u(account_id, event_id, cooldown_secs, max_cooldown_secs, ord)
     CROSS JOIN LATERAL (
          SELECT count(*) AS mails, max(r.claimed_at) AS last
            FROM reset_requests r
           WHERE r.account_id = u.account_id AND r.event_id <> u.event_id
             AND r.kind = 'reset' AND r.outcome IN ('pending', 'sent')
             AND r.claimed_at > now() - interval '24 hours'
      ) t
$$;

-- The same rule for one event; `worker replay` says with it what the worker would do now.
CREATE FUNCTION reset_throttle_reason(p_account_id text, p_event_id uuid, p_cooldown_secs double precision, p_max_cooldown_secs double precision) RETURNS text
    LANGUAGE plpgsql STABLE
    AS $$
BEGIN
    RETURN (SELECT t.reason
              FROM reset_throttle_reasons(ARRAY[p_account_id], ARRAY[p_event_id],
                                          ARRAY[p_cooldown_secs], ARRAY[p_max_cooldown_secs]) t);
END
$$;

-- Claims one event: under the account's lock, decides whether a mail may go and, if so,
-- retires the account's live tokens, stores the new token's hash and writes a pending record
-- held by `p_holder` for `p_lease_secs`. `answer` is 'proceed', 'throttled', 'busy' when
-- another delivery holds a live claim on the event (`busy_for`: the seconds left on its
-- lease), or 'done' when the event was already decided: then `done` is the outcome that
-- stands (a retry by an operator, `p_again`, decides anew unless the event was sent).
CREATE FUNCTION reset_claim(p_event_id uuid, p_account_id text, p_request_id text, p_requested_at timestamp with time zone, p_attempt integer, p_token_hash bytea, p_ttl_secs double precision, p_cooldown_secs double precision, p_max_cooldown_secs double precision, p_again boolean, p_holder uuid, p_lease_secs double precision, OUT answer text, OUT done text, OUT busy_for double precision) RETURNS record
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_existing text;
    v_holder   uuid;
    v_until    timestamptz;
    v_why      text;
BEGIN
    -- Serialises claims for one account across all workers: a burst yields one email.
    PERFORM pg_advisory_xact_lock(hashtextextended(p_account_id, 7041));

    SELECT outcome, lease_holder, lease_until INTO v_existing, v_holder, v_until
      FROM reset_requests WHERE event_id = p_event_id FOR UPDATE;
    IF v_existing IN ('sent', 'no_account', 'throttled', 'failed')
       AND (NOT p_again OR v_existing = 'sent') THEN
        answer := 'done';
        done := v_existing;
        RETURN;
    END IF;

    IF v_existing = 'pending' AND v_until > now() AND v_holder IS DISTINCT FROM p_holder THEN
        UPDATE reset_requests SET waits = waits + 1, updated_at = now()
         WHERE event_id = p_event_id;
        answer := 'busy';
        busy_for := extract(epoch FROM v_until - now());
        RETURN;
    END IF;

    v_why := reset_throttle_reason(p_account_id, p_event_id, p_cooldown_secs, p_max_cooldown_secs);

    IF v_why IS NOT NULL THEN
        INSERT INTO reset_requests
            (event_id, account_id, outcome, attempts, last_error, request_id, requested_at, kind)
        VALUES (p_event_id, p_account_id, 'throttled', p_attempt, v_why, p_request_id,
                p_requested_at, 'reset')
        ON CONFLICT (event_id) DO UPDATE
        SET account_id = EXCLUDED.account_id, outcome = 'throttled',
            attempts = GREATEST(reset_requests.attempts, EXCLUDED.attempts),
            last_error = EXCLUDED.last_error, updated_at = now();
        answer := 'throttled';
        RETURN;
    END IF;

    UPDATE reset_tokens SET invalidated_at = now()
     WHERE account_id = p_account_id AND used_at IS NULL AND invalidated_at IS NULL;
    INSERT INTO reset_tokens (token_hash, account_id, event_id, expires_at, password_fingerprint)
    VALUES (p_token_hash, p_account_id, p_event_id, now() + make_interval(secs => p_ttl_secs),
            (SELECT sha256(convert_to(coalesce(password_hash, ''), 'UTF8'))
               FROM accounts WHERE id = p_account_id));
    INSERT INTO reset_requests
        (event_id, account_id, outcome, attempts, request_id, requested_at, claimed_at, kind,
         lease_holder, lease_until)
    VALUES (p_event_id, p_account_id, 'pending', p_attempt, p_request_id, p_requested_at, now(),
            'reset', p_holder, now() + make_interval(secs => p_lease_secs))
    ON CONFLICT (event_id) DO UPDATE
    SET account_id = EXCLUDED.account_id, outcome = 'pending',
        attempts = GREATEST(reset_requests.attempts, EXCLUDED.attempts),
        claimed_at = COALESCE(reset_requests.claimed_at, EXCLUDED.claimed_at),
        lease_holder = EXCLUDED.lease_holder, lease_until = EXCLUDED.lease_until,
        updated_at = now();
    answer := 'proceed';
END
$$;

-- Looks up and claims a batch of events in one statement, so in one transaction and one commit:
-- per event, the lookup above and the claim's decision, answered as reset_claim answers, or
-- 'not_found' / 'ambiguous'. Rows come back in input order, numbered by `ord`.
--
-- Every account's lock is taken before any claim, in one global order (by lock key): two
-- batches sharing accounts then wait for each other instead of deadlocking. An event alone
-- with its account in the batch (the usual case) is claimed together with the others like it,
-- one statement per step. Events that share an account with another in the batch go through
-- reset_claim one by one in input order, since each must see what the one before it wrote:
-- of two deliveries of one event in a batch, the second finds the first's claim and is 'busy'.
CREATE FUNCTION reset_find_and_claim(p_event_ids uuid[], p_ids text[], p_request_ids text[], p_requested_at timestamp with time zone[], p_attempts integer[], p_token_hashes bytea[], p_ttl_secs double precision[], p_cooldown_secs double precision[], p_max_cooldown_secs double precision[], p_again boolean[], p_holders uuid[], p_lease_secs double precision) RETURNS TABLE(ord integer, answer text, done text, busy_for double precision, id text, email text, display_name text, locale text, matches integer)
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
DECLARE
    v_n        integer := coalesce(array_length(p_event_ids, 1), 0);
    v_ids      text[];
    v_emails   text[];
    v_names    text[];
    v_locales  text[];
    v_matches  integer[];
    v_alone    boolean[];
    v_alone_ids text[];
    v_answers  text[];
    v_dones    text[];
    v_busy     double precision[];
    v_answer   text;
    v_done     text;
    v_busy_for double precision;
    v_reasons  text[];
    v_key      bigint;
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

    SELECT array_agg(e.account_id IS NOT NULL AND e.per_account = 1 AND e.per_event = 1
                     ORDER BY e.ord)
      INTO v_alone
      FROM (SELECT u.ord, u.account_id,
                   count(*) OVER (PARTITION BY u.account_id) AS per_account,
                   count(*) OVER (PARTITION BY u.event_id) AS per_event
              FROM unnest(v_ids, p_event_ids) WITH ORDINALITY AS u(account_id, event_id, ord)
           ) e;

    -- Plain arguments, not subqueries, let the planner inline reset_throttle_reasons.
    v_alone_ids := ARRAY(SELECT CASE WHEN v_alone[i] THEN v_ids[i] END
                           FROM generate_series(1, v_n) i ORDER BY i);

    -- Locks the records those events already have (a redelivery), as reset_claim does, so a
    -- concurrent `sent` is seen once committed.
    WITH existing AS MATERIALIZED (
        SELECT r.event_id, r.outcome, r.lease_holder, r.lease_until FROM reset_requests r
         WHERE r.event_id = ANY (ARRAY(SELECT p_event_ids[i] FROM generate_series(1, v_n) i
                                        WHERE v_alone[i]))
           FOR UPDATE
    )
    SELECT array_agg(
               CASE WHEN NOT v_alone[u.ord::integer] THEN NULL
                    WHEN x.outcome IN ('sent', 'no_account', 'throttled', 'failed')
                         AND (NOT u.again OR x.outcome = 'sent') THEN 'done'
                    WHEN x.outcome = 'pending' AND x.lease_until > now()
                         AND x.lease_holder IS DISTINCT FROM u.holder THEN 'busy'
                    WHEN t.reason IS NOT NULL THEN 'throttled'
                    ELSE 'proceed'
               END ORDER BY u.ord),
           array_agg(
               CASE WHEN v_alone[u.ord::integer]
                         AND x.outcome IN ('sent', 'no_account', 'throttled', 'failed')
                         AND (NOT u.again OR x.outcome = 'sent') THEN x.outcome
               END ORDER BY u.ord),
           array_agg(t.reason ORDER BY u.ord),
           array_agg(extract(epoch FROM x.lease_until - now()) ORDER BY u.ord)
      INTO v_answers, v_dones, v_reasons, v_busy
      FROM unnest(p_event_ids, p_again, p_holders) WITH ORDINALITY
           AS u(event_id, again, holder, ord)
      LEFT JOIN existing x ON x.event_id = u.event_id
      LEFT JOIN reset_throttle_reasons(v_alone_ids, p_event_ids, p_cooldown_secs,
                                       p_max_cooldown_secs) t ON t.ord = u.ord;

    UPDATE reset_requests SET waits = waits + 1, updated_at = now()
     WHERE event_id = ANY (ARRAY(SELECT p_event_ids[i] FROM generate_series(1, v_n) i
                                  WHERE v_answers[i] = 'busy'));

    INSERT INTO reset_requests
        (event_id, account_id, outcome, attempts, last_error, request_id, requested_at, kind)
    SELECT p_event_ids[i], v_ids[i], 'throttled', p_attempts[i], v_reasons[i],
           p_request_ids[i], p_requested_at[i], 'reset'
      FROM generate_series(1, v_n) i
     WHERE v_answers[i] = 'throttled'
    ON CONFLICT (event_id) DO UPDATE
    SET account_id = EXCLUDED.account_id, outcome = 'throttled',
        attempts = GREATEST(reset_requests.attempts, EXCLUDED.attempts),
        last_error = EXCLUDED.last_error, updated_at = now();

    UPDATE reset_tokens SET invalidated_at = now()
     WHERE account_id = ANY (ARRAY(SELECT v_ids[i] FROM generate_series(1, v_n) i
                                    WHERE v_answers[i] = 'proceed'))
       AND used_at IS NULL AND invalidated_at IS NULL;

    INSERT INTO reset_tokens (token_hash, account_id, event_id, expires_at, password_fingerprint)
    SELECT p_token_hashes[i], v_ids[i], p_event_ids[i],
           now() + make_interval(secs => p_ttl_secs[i]),
           sha256(convert_to(coalesce(a.password_hash, ''), 'UTF8'))
      FROM generate_series(1, v_n) i
      LEFT JOIN accounts a ON a.id = v_ids[i]
     WHERE v_answers[i] = 'proceed';

    INSERT INTO reset_requests
        (event_id, account_id, outcome, attempts, request_id, requested_at, claimed_at, kind,
         lease_holder, lease_until)
    SELECT p_event_ids[i], v_ids[i], 'pending', p_attempts[i], p_request_ids[i],
           p_requested_at[i], now(), 'reset', p_holders[i],
           now() + make_interval(secs => p_lease_secs)
      FROM generate_series(1, v_n) i
     WHERE v_answers[i] = 'proceed'
    ON CONFLICT (event_id) DO UPDATE
    SET account_id = EXCLUDED.account_id, outcome = 'pending',
        attempts = GREATEST(reset_requests.attempts, EXCLUDED.attempts),
        claimed_at = COALESCE(reset_requests.claimed_at, EXCLUDED.claimed_at),
        lease_holder = EXCLUDED.lease_holder, lease_until = EXCLUDED.lease_until,
        updated_at = now();

    FOR i IN 1 .. v_n LOOP
        IF v_ids[i] IS NOT NULL AND NOT v_alone[i] THEN
            SELECT c.answer, c.done, c.busy_for INTO v_answer, v_done, v_busy_for
              FROM reset_claim(p_event_ids[i], v_ids[i], p_request_ids[i], p_requested_at[i],
                               p_attempts[i], p_token_hashes[i], p_ttl_secs[i],
                               p_cooldown_secs[i], p_max_cooldown_secs[i], p_again[i],
                               p_holders[i], p_lease_secs) c;
            v_answers[i] := v_answer;
            v_dones[i] := v_done;
            v_busy[i] := v_busy_for;
        END IF;
    END LOOP;

    FOR i IN 1 .. v_n LOOP
        ord := i;
        id := v_ids[i];
        email := v_emails[i];
        display_name := v_names[i];
        locale := v_locales[i];
        matches := v_matches[i];
        answer := CASE WHEN v_ids[i] IS NOT NULL THEN v_answers[i]
                       WHEN v_matches[i] = 0 THEN 'not_found'
                       ELSE 'ambiguous' END;
        done := v_dones[i];
        busy_for := CASE WHEN v_answers[i] = 'busy' THEN v_busy[i] END;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Sent records and the next batch of claims in one statement, so in one round trip and one
-- commit. Sent records go first, so a redelivered copy of an event in the same batch sees it
-- sent.
CREATE FUNCTION reset_mark_sent_and_claim(p_sent_ids uuid[], p_event_ids uuid[], p_ids text[], p_request_ids text[], p_requested_at timestamp with time zone[], p_attempts integer[], p_token_hashes bytea[], p_ttl_secs double precision[], p_cooldown_secs double precision[], p_max_cooldown_secs double precision[], p_again boolean[], p_holders uuid[], p_lease_secs double precision) RETURNS TABLE(ord integer, answer text, done text, busy_for double precision, id text, email text, display_name text, locale text, matches integer)
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF coalesce(array_length(p_sent_ids, 1), 0) > 0 THEN
        PERFORM reset_mark_sent(p_sent_ids);
    END IF;
    RETURN QUERY
        SELECT * FROM reset_find_and_claim(p_event_ids, p_ids, p_request_ids, p_requested_at,
                                           p_attempts, p_token_hashes, p_ttl_secs,
                                           p_cooldown_secs, p_max_cooldown_secs, p_again,
                                           p_holders, p_lease_secs);
END
$$;
