-- "I did not ask for this" and "This wasn't me": the mailbox's owner reports a reset mail or a
-- password change from a link in the mail. A report kills the account's live links and codes
-- and is recorded once per mail; a report of a reset mail also pauses new reset mails for the
-- account. The api makes reports through the functions below only, and queues the event that
-- tells the product (reset.reported, change.reported) in the same transaction.

CREATE TABLE reset_reports (
    -- The mail reported: the reset mail's or the password-changed mail's event.
    mail_event_id uuid PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('reset', 'change')),
    account_id    text NOT NULL,
    -- The report's own event (its webhook's id).
    event_id      uuid NOT NULL,
    reported_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reset_reports_account ON reset_reports (account_id, reported_at);

-- No reset mail goes to the account before `until` (RESET_REPORT_PAUSE after its report).
CREATE TABLE reset_pauses (
    account_id text PRIMARY KEY,
    until      timestamptz NOT NULL
);

-- The throttle, with the pause first: a paused account gets no reset mail, whoever asks.
CREATE OR REPLACE FUNCTION reset_throttle_reasons(p_account_ids text[], p_event_ids uuid[], p_cooldown_secs double precision[], p_max_cooldown_secs double precision[]) RETURNS TABLE(ord bigint, reason text)
    LANGUAGE sql STABLE
    AS $$
    SELECT u.ord,
           CASE WHEN p.until > now()
                    THEN 'the owner reported a reset mail they did not ask for: reset mails '
                         || 'are paused until ' || to_char(p.until AT TIME ZONE 'UTC',
                                                           'YYYY-MM-DD HH24:MI')
                         || ' UTC (RESET_REPORT_PAUSE)'
                WHEN t.mails > 0
                 AND t.last > now() - make_interval(secs => least(
                         u.cooldown_secs * power(2::double precision, least(t.mails - 1, 40)),
                         u.max_cooldown_secs))
                    THEN 'the account had an email less than its cooldown ago (RESET_COOLDOWN, '
                         || 'doubling with each email in 24 hours up to RESET_COOLDOWN_MAX)'
           END
      FROM unnest(p_account_ids, p_event_ids, p_cooldown_secs, p_max_cooldown_secs)
           WITH ORDINALITY AS u(account_id, event_id, cooldown_secs, max_cooldown_secs, ord)
      LEFT JOIN reset_pauses p ON p.account_id = u.account_id
     CROSS JOIN LATERAL (
          SELECT count(*) AS mails, max(r.claimed_at) AS last
            FROM reset_requests r
           WHERE r.account_id = u.account_id AND r.event_id <> u.event_id
             AND r.kind = 'reset' AND r.outcome IN ('pending', 'sent')
             AND r.claimed_at > now() - interval '24 hours'
      ) t
$$;

-- Kills every live link and code of account `p_account_id`.
CREATE FUNCTION reset_kill_live_tokens(p_account_id text) RETURNS void
LANGUAGE sql VOLATILE AS $$
    UPDATE reset_tokens SET invalidated_at = now()
     WHERE account_id = p_account_id AND used_at IS NULL AND invalidated_at IS NULL
$$;

-- The account and mail a reset mail's report link names: the token with hash `p_hash`, used,
-- superseded or not, while it has not expired (the report link dies with the reset link).
CREATE FUNCTION reset_report_target(p_hash bytea)
RETURNS TABLE(account_id text, mail_event_id uuid, reported boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT t.account_id, t.event_id,
           EXISTS (SELECT 1 FROM reset_reports r WHERE r.mail_event_id = t.event_id)
      FROM reset_tokens t
     WHERE t.token_hash = p_hash AND t.expires_at > now()
$$;

-- How long a password-changed mail's "This wasn't me" link works: a week from the change.
CREATE FUNCTION reset_change_report_window() RETURNS interval
LANGUAGE sql IMMUTABLE AS $$ SELECT interval '7 days' $$;

-- The account a password-changed mail went to, while its report link lives. Pending too:
-- the mail may be read before its sent record is written.
CREATE FUNCTION reset_change_report_target(p_event_id uuid)
RETURNS TABLE(account_id text, mail_event_id uuid, reported boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT r.account_id, r.event_id,
           EXISTS (SELECT 1 FROM reset_reports p WHERE p.mail_event_id = r.event_id)
      FROM reset_requests r
     WHERE r.event_id = p_event_id AND r.kind = 'password_changed'
       AND r.outcome IN ('pending', 'sent')
       AND r.requested_at > now() - reset_change_report_window()
$$;

-- Reports the mail a report link names, taking only the link's proof: `p_hash` (a reset
-- mail's token hash) or `p_change_event` (a password-changed mail's event). The account is
-- found here, not named by the caller, so the api's role can report only what a link it
-- holds reports. Records the report, kills the account's live links and codes, pauses its
-- reset mails for `p_pause_secs` (a reset report; at most 30 days) and queues the report's
-- event, which must name that account and mail, for the outbox relay, all at once. Answers
-- 'reported', 'again' (reported before: nothing changes) or 'expired'.
CREATE FUNCTION reset_report(p_hash bytea, p_change_event uuid, p_pause_secs double precision,
                             p_event_id uuid, p_subject text, p_payload bytea)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_kind    text := CASE WHEN p_hash IS NOT NULL THEN 'reset' ELSE 'change' END;
    v_account text;
    v_mail    uuid;
    v_event   jsonb := convert_from(p_payload, 'UTF8')::jsonb;
BEGIN
    IF v_kind = 'reset' THEN
        SELECT t.account_id, t.mail_event_id INTO v_account, v_mail
          FROM reset_report_target(p_hash) t;
    ELSE
        SELECT t.account_id, t.mail_event_id INTO v_account, v_mail
          FROM reset_change_report_target(p_change_event) t;
    END IF;
    IF v_account IS NULL THEN
        RETURN 'expired';
    END IF;
    IF v_event->>'account_id' IS DISTINCT FROM v_account
       OR v_event->>'mail_event_id' IS DISTINCT FROM v_mail::text
       OR v_event->>'kind' IS DISTINCT FROM v_kind
       OR v_event->>'event_id' IS DISTINCT FROM p_event_id::text
       OR p_subject NOT LIKE '%.reported' THEN
        RAISE EXCEPTION 'the report event does not name the mail its link reports';
    END IF;
    INSERT INTO reset_reports (mail_event_id, kind, account_id, event_id)
    VALUES (v_mail, v_kind, v_account, p_event_id)
    ON CONFLICT (mail_event_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN 'again';
    END IF;
    PERFORM reset_kill_live_tokens(v_account);
    IF v_kind = 'reset' AND p_pause_secs > 0 THEN
        INSERT INTO reset_pauses (account_id, until)
        VALUES (v_account, now() + least(make_interval(secs => p_pause_secs),
                                         interval '30 days'))
        ON CONFLICT (account_id) DO UPDATE SET until = GREATEST(reset_pauses.until, EXCLUDED.until);
    END IF;
    INSERT INTO event_outbox (event_id, subject, payload) VALUES (p_event_id, p_subject, p_payload);
    RETURN 'reported';
END
$$;

REVOKE EXECUTE ON FUNCTION reset_report_target(bytea), reset_change_report_target(uuid),
    reset_report(bytea, uuid, double precision, uuid, text, bytea),
    reset_kill_live_tokens(text) FROM PUBLIC;

-- The functions the api's role may call, a row each. reset_grant_api grants what the table
-- lists, so a migration that gives the api a function adds a row and calls it, rather than
-- writing the whole grant again.
CREATE TABLE reset_api_functions (fn regprocedure PRIMARY KEY);
INSERT INTO reset_api_functions (fn) VALUES
    ('reset_live_token(bytea)'),
    ('reset_lock_live_token_of(text)'),
    ('reset_count_wrong_code(bytea, integer)'),
    ('reset_complete(bytea, text, text, uuid, text, bytea)'),
    ('reset_report_target(bytea)'),
    ('reset_change_report_target(uuid)'),
    ('reset_report(bytea, uuid, double precision, uuid, text, bytea)');

CREATE OR REPLACE FUNCTION reset_grant_api(p_role name) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_fn regprocedure;
BEGIN
    EXECUTE format('REVOKE ALL ON accounts, reset_tokens FROM %I', p_role);
    EXECUTE format('GRANT SELECT ON _sqlx_migrations TO %I', p_role);
    FOR v_fn IN SELECT fn FROM reset_api_functions LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', v_fn, p_role);
    END LOOP;
    EXECUTE format('REVOKE INSERT ON event_outbox FROM %I', p_role);
    EXECUTE format('GRANT SELECT, DELETE ON event_outbox TO %I', p_role);
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'reset_api') THEN
        PERFORM reset_grant_api('reset_api');
    END IF;
END
$$;
