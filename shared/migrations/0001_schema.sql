-- The tables both binaries use. Functions are in 0002.

-- The product's users, as the worker sees them. This is the integration point: a deployment
-- may drop this table and create a view of the same name and columns over its own user table.
-- The worker only reads it; the api writes `password_hash` when a reset completes.
CREATE TABLE IF NOT EXISTS accounts (
    id            text PRIMARY KEY,
    email         text NOT NULL,
    display_name  text,
    locale        text,
    password_hash text
);
CREATE INDEX IF NOT EXISTS accounts_email_ci ON accounts (lower(email));

-- One row per event the worker handled: what it decided and did. It makes redelivery harmless
-- (an event already `sent` is not mailed again) and is the audit trail. `pending` while a
-- mail is being sent; every other outcome is final.
CREATE TABLE reset_requests (
    event_id     uuid PRIMARY KEY,
    kind         text NOT NULL DEFAULT 'reset' CHECK (kind IN ('reset', 'password_changed')),
    account_id   text,
    outcome      text NOT NULL
                 CHECK (outcome IN ('pending', 'sent', 'no_account', 'throttled', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text,
    request_id   text NOT NULL,
    requested_at timestamptz NOT NULL,
    -- When a mail for this request was decided on; what throttling counts.
    claimed_at   timestamptz,
    sent_at      timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reset_requests_account_claimed ON reset_requests (account_id, claimed_at)
    WHERE claimed_at IS NOT NULL;

-- Reset tokens, by SHA-256 only: the plaintext exists in the email and nowhere else.
CREATE TABLE reset_tokens (
    token_hash           bytea PRIMARY KEY,
    account_id           text NOT NULL,
    event_id             uuid NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    expires_at           timestamptz NOT NULL,
    used_at              timestamptz,
    -- Set when a newer token for the account, or a retry of the same request, replaces it.
    invalidated_at       timestamptz,
    -- The password the token was issued against: a password changed by any other path (the
    -- product's own settings page) kills it.
    password_fingerprint bytea
);
CREATE INDEX reset_tokens_live ON reset_tokens (account_id)
    WHERE used_at IS NULL AND invalidated_at IS NULL;
CREATE INDEX reset_tokens_event ON reset_tokens (event_id);

-- Events written in the same transaction as the change they announce, and published from
-- here: a crash between the commit and the publish delays the event, never loses it.
CREATE TABLE event_outbox (
    event_id   uuid PRIMARY KEY,
    subject    text NOT NULL,
    payload    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
