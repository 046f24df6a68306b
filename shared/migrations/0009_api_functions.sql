-- The api's database role completes resets through these functions alone, no longer through
-- table rights: it could read every account's password hash and email, and set any
-- password_hash without a token. Each function runs with its owner's rights (the role that
-- applies the migrations) and does one step of a reset for one token the caller names by its
-- hash, so the api's role can set a password only with a live token, and learns of an account
-- only what the holder of its live token may know.

-- The conditions under which token `t` of account `a` works: unused, not invalidated, not
-- expired, and issued against the account's current password hash and email.
CREATE FUNCTION reset_token_is_live(t reset_tokens, a accounts) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT t.used_at IS NULL AND t.invalidated_at IS NULL AND t.expires_at > now()
       AND t.password_fingerprint = sha256(convert_to(coalesce(a.password_hash, ''), 'UTF8'))
       AND t.email_fingerprint = reset_email_fingerprint(a.email)
$$;

-- The live token with hash `p_hash`: its account's id, email and locale; no row otherwise.
CREATE FUNCTION reset_live_token(p_hash bytea)
RETURNS TABLE(account_id text, email text, locale text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT a.id, a.email, a.locale
      FROM reset_tokens t JOIN accounts a ON a.id = t.account_id
     WHERE t.token_hash = p_hash AND reset_token_is_live(t, a)
$$;

-- The hash of the live token of the account `p_id` names (as reset_find_account finds it),
-- locked until the caller's transaction ends, so that codes tried at once against it are
-- counted one by one. The caller derives the code from it with a key only it holds.
CREATE FUNCTION reset_lock_live_token_of(p_id text) RETURNS bytea
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT t.token_hash
      FROM reset_find_account(p_id) f
      JOIN reset_tokens t ON t.account_id = f.id
      JOIN accounts a ON a.id = t.account_id
     WHERE reset_token_is_live(t, a)
     ORDER BY t.created_at DESC LIMIT 1
       FOR UPDATE OF t
$$;

-- Counts a wrong code against the token with hash `p_hash`; at `p_max` it dies, link and code.
CREATE FUNCTION reset_count_wrong_code(p_hash bytea, p_max integer) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    UPDATE reset_tokens
       SET code_failures = code_failures + 1,
           invalidated_at = CASE WHEN code_failures + 1 >= p_max THEN now() END
     WHERE token_hash = p_hash
$$;

-- Completes a reset in the caller's transaction: if the token with hash `p_hash` is live and
-- belongs to `p_account_id`, uses it, invalidates the account's other live tokens, sets the
-- password hash, and queues the password-changed event for the outbox relay. Returns whether
-- it did; a token used meanwhile (the row is locked first) does nothing.
CREATE FUNCTION reset_complete(p_hash bytea, p_account_id text, p_password_hash text,
                               p_event_id uuid, p_subject text, p_payload bytea)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM 1
       FROM reset_tokens t JOIN accounts a ON a.id = t.account_id
      WHERE t.token_hash = p_hash AND t.account_id = p_account_id
        AND reset_token_is_live(t, a)
        FOR UPDATE OF t;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE reset_tokens SET used_at = now() WHERE token_hash = p_hash;
    UPDATE reset_tokens SET invalidated_at = now()
     WHERE account_id = p_account_id AND token_hash <> p_hash
       AND used_at IS NULL AND invalidated_at IS NULL;
    UPDATE accounts SET password_hash = p_password_hash WHERE id = p_account_id;
    INSERT INTO event_outbox (event_id, subject, payload) VALUES (p_event_id, p_subject, p_payload);
    RETURN true;
END
$$;

-- Functions are executable by everyone unless revoked: these only by the roles granted them.
REVOKE EXECUTE ON FUNCTION reset_live_token(bytea), reset_lock_live_token_of(text),
    reset_count_wrong_code(bytea, integer),
    reset_complete(bytea, text, text, uuid, text, bytea) FROM PUBLIC;

-- What the api's role may do: read which migrations are applied (it applies none), call the
-- functions above, and relay the outbox (its own queue). No table of accounts or tokens.
CREATE OR REPLACE FUNCTION reset_grant_api(p_role name) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('REVOKE ALL ON accounts, reset_tokens FROM %I', p_role);
    EXECUTE format('GRANT SELECT ON _sqlx_migrations TO %I', p_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION reset_live_token(bytea), '
                   'reset_lock_live_token_of(text), reset_count_wrong_code(bytea, integer), '
                   'reset_complete(bytea, text, text, uuid, text, bytea) TO %I', p_role);
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
