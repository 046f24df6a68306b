//! The database schema both binaries rely on: migrations embedded at compile time and applied
//! by whichever binary starts and may change the schema (sqlx takes an advisory lock, so
//! starting together is safe). A binary whose role may not (the api's own role in a
//! least-privilege deployment) checks instead that they have all been applied.

use sqlx::Connection;
use sqlx::migrate::{MigrateError, Migrator};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Why the schema is not ready.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error(
        "migration {0} is not applied yet, and this database role may not create tables to apply it (the worker's role needs CREATE on the schema)"
    )]
    NotApplied(i64),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl SchemaError {
    /// The database was migrated by migrations this build does not have, or has changed: it
    /// holds another schema, and no retry will help.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Self::Migrate(MigrateError::VersionMissing(_) | MigrateError::VersionMismatch(_))
        )
    }
}

/// Applies every migration not yet applied, or, where this role may not create objects in
/// the schema, checks that every one has been applied by a role that may.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), SchemaError> {
    let may_change: bool =
        sqlx::query_scalar("SELECT has_schema_privilege(current_schema(), 'CREATE')")
            .fetch_one(pool)
            .await?;
    if !may_change {
        return check_applied(pool).await;
    }
    // On its own connection, closed afterwards: sqlx leaves its advisory lock held when a
    // migration fails, and a pooled connection would keep it (and every other migrator
    // waiting) for as long as the pool keeps the connection.
    let mut conn = pool.acquire().await?.detach();
    let result = MIGRATOR.run_direct(&mut conn).await;
    let _ = conn.close().await;
    Ok(result?)
}

async fn check_applied(pool: &sqlx::PgPool) -> Result<(), SchemaError> {
    let applied: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT version, checksum FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    for (version, _) in &applied {
        if !MIGRATOR.iter().any(|m| m.version == *version) {
            return Err(MigrateError::VersionMissing(*version).into());
        }
    }
    for migration in MIGRATOR.iter() {
        match applied.iter().find(|(v, _)| *v == migration.version) {
            None => return Err(SchemaError::NotApplied(migration.version)),
            Some((_, checksum)) if *checksum != *migration.checksum => {
                return Err(MigrateError::VersionMismatch(migration.version).into());
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Where PostgreSQL is: the processing records, tokens and accounts.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseUrl {
    /// PostgreSQL URL. Migrations are applied at start-up by whichever binary starts first
    /// and may change the schema.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    pub database_url: String,
}
