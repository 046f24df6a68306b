-- Completing a reset: tokens remember the password they were issued against, so a password
-- changed by any other path (the product's own settings page) kills them.
ALTER TABLE reset_tokens ADD COLUMN password_fingerprint bytea;

-- Processing records now also cover "your password was changed" notifications.
ALTER TABLE reset_requests ADD COLUMN kind text NOT NULL DEFAULT 'reset'
    CHECK (kind IN ('reset', 'password_changed'));

-- Events written in the same transaction as the change they announce, and published from
-- here: a crash between the commit and the publish delays the event, never loses it.
CREATE TABLE event_outbox (
    event_id   uuid PRIMARY KEY,
    subject    text NOT NULL,
    payload    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
