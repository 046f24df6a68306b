-- A token is bound to the address it was mailed to, as it is to the password it was issued
-- against: once the account's email changes, a link in the old mailbox no longer works.
-- Whoever holds an old address (a former employer, a recycled mailbox) must not be able to
-- take the account over after its owner moved it.
ALTER TABLE reset_tokens ADD COLUMN email_fingerprint bytea;

CREATE FUNCTION reset_email_fingerprint(p_email text) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT sha256(convert_to(coalesce(p_email, ''), 'UTF8'))
$$;

-- Filled from the account as the token is written, in the statement that writes it, so every
-- path that mints a token binds it without repeating the rule.
CREATE FUNCTION reset_tokens_bind_email() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.email_fingerprint := (SELECT reset_email_fingerprint(email)
                                FROM accounts WHERE id = NEW.account_id);
    RETURN NEW;
END
$$;

CREATE TRIGGER reset_tokens_bind_email BEFORE INSERT ON reset_tokens
    FOR EACH ROW EXECUTE FUNCTION reset_tokens_bind_email();

-- Live tokens keep working across the upgrade: bound to the address they were mailed to,
-- which is the account's address now.
UPDATE reset_tokens t SET email_fingerprint = reset_email_fingerprint(a.email)
  FROM accounts a
 WHERE a.id = t.account_id AND t.used_at IS NULL AND t.invalidated_at IS NULL;
