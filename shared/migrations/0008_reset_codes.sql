-- A reset mail carries a one-time code beside its link. The code is not stored: the api and
-- the worker derive it from the token's hash with a key only they hold (RESET_CODE_KEY), so
-- it lives and dies with its token's row. What is stored is how many wrong codes were tried
-- against the row: at five the api invalidates it, link and code alike, and every api
-- instance sees the same count.
ALTER TABLE reset_tokens ADD COLUMN code_failures integer NOT NULL DEFAULT 0;

CREATE OR REPLACE FUNCTION reset_grant_api(p_role name) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT SELECT ON _sqlx_migrations TO %I', p_role);
    EXECUTE format('GRANT SELECT ON accounts, reset_tokens TO %I', p_role);
    EXECUTE format('GRANT UPDATE (password_hash) ON accounts TO %I', p_role);
    EXECUTE format('GRANT UPDATE (used_at, invalidated_at, code_failures) ON reset_tokens TO %I',
                   p_role);
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
