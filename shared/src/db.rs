//! The database schema both binaries rely on: migrations embedded at compile time and applied
//! by whichever binary starts (sqlx takes an advisory lock, so starting together is safe).

/// Applies every migration not yet applied.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}

/// The database was migrated by migrations this build does not have, or has changed: it
/// holds another schema, and no retry will help.
pub fn is_schema_conflict(err: &sqlx::migrate::MigrateError) -> bool {
    use sqlx::migrate::MigrateError;
    matches!(
        err,
        MigrateError::VersionMissing(_) | MigrateError::VersionMismatch(_)
    )
}

/// Where PostgreSQL is: the processing records, tokens and accounts.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseUrl {
    /// PostgreSQL URL. Migrations are applied at start-up by whichever binary starts first.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    pub database_url: String,
}
