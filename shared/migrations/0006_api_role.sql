-- What the api's own database role needs to complete resets, where a deployment gives it
-- one: read accounts and tokens, set a password, use up tokens, queue and relay
-- password-changed events, and see which migrations are applied (it applies none; the role
-- that owns the schema does). Nothing else: it cannot read processing records, mint tokens,
-- or change the schema.
--
-- `reset_api` (the compose files' role) is granted here if it exists; for a role of another
-- name, or one created after this migration ran: SELECT reset_grant_api('that_role');
CREATE FUNCTION reset_grant_api(p_role name) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT SELECT ON _sqlx_migrations TO %I', p_role);
    EXECUTE format('GRANT SELECT ON accounts, reset_tokens TO %I', p_role);
    EXECUTE format('GRANT UPDATE (password_hash) ON accounts TO %I', p_role);
    EXECUTE format('GRANT UPDATE (used_at, invalidated_at) ON reset_tokens TO %I', p_role);
    EXECUTE format('GRANT SELECT, INSERT, DELETE ON event_outbox TO %I', p_role);
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'reset_api') THEN
        PERFORM reset_grant_api('reset_api');
    END IF;
END
$$;
