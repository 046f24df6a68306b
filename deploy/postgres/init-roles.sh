#!/bin/sh
# Database roles for the compose stack, run by the postgres image once, when it creates the
# database (docker-entrypoint-initdb.d), before either binary starts:
#   reset_worker  owns the schema: applies the migrations, claims events, mints tokens
#   reset_api     what completing a reset needs and nothing more: the reset functions, no
#                 table of accounts or tokens; the migrations grant it (reset_grant_api)
#                 once the tables exist
# Passwords come from WORKER_DB_PASSWORD and API_DB_PASSWORD. Safe to run again: existing
# roles get the given passwords.
set -eu
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" \
  --dbname "${POSTGRES_DB:-postgres}" \
  -v worker_password="${WORKER_DB_PASSWORD:?set WORKER_DB_PASSWORD}" \
  -v api_password="${API_DB_PASSWORD:?set API_DB_PASSWORD}" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', r) FROM unnest(ARRAY['reset_worker', 'reset_api']) r
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) \gexec
ALTER ROLE reset_worker PASSWORD :'worker_password';
ALTER ROLE reset_api PASSWORD :'api_password';
SELECT format('ALTER DATABASE %I OWNER TO reset_worker', current_database()) \gexec
ALTER SCHEMA public OWNER TO reset_worker;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SQL
