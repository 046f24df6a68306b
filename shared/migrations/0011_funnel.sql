-- The funnel: when a link was first opened, for `worker replay`'s timeline (accepted, mailed,
-- opened, completed or reported) and the api's `opened` count. Recorded by the check every
-- open makes, so it costs no query of its own; it changes nothing about the link.
ALTER TABLE reset_tokens ADD COLUMN opened_at timestamptz;

-- reset_live_token, recording the first open: the live token with hash `p_hash`, its
-- account's id, email and locale, and whether this is its first open; no row otherwise.
CREATE FUNCTION reset_open_live_token(p_hash bytea)
RETURNS TABLE(account_id text, email text, locale text, first_open boolean)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH live AS (
        SELECT t.token_hash, t.opened_at IS NULL AS first_open, a.id, a.email, a.locale
          FROM reset_tokens t JOIN accounts a ON a.id = t.account_id
         WHERE t.token_hash = p_hash AND reset_token_is_live(t, a)
    ), marked AS (
        -- Checked again under the row's lock: of two opens at once, one is the first.
        UPDATE reset_tokens SET opened_at = now()
         WHERE token_hash IN (SELECT token_hash FROM live WHERE first_open)
           AND opened_at IS NULL
        RETURNING token_hash
    )
    SELECT id, email, locale, EXISTS (SELECT 1 FROM marked) FROM live
$$;

REVOKE EXECUTE ON FUNCTION reset_open_live_token(bytea) FROM PUBLIC;

INSERT INTO reset_api_functions (fn) VALUES ('reset_open_live_token(bytea)');

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'reset_api') THEN
        PERFORM reset_grant_api('reset_api');
    END IF;
END
$$;
