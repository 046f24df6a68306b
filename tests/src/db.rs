//! A fresh PostgreSQL database per test, on the server the tests share.

use std::sync::LazyLock;

use sqlx::{Connection, PgConnection, PgPool};
use worker::store::Outcome;

/// A superuser's URL of the PostgreSQL where test databases are created: `TEST_POSTGRES_URL`
/// (scripts/test sets it to what scripts/services found or started), else the machine's.
pub fn admin_url() -> &'static str {
    static URL: LazyLock<String> = LazyLock::new(|| {
        std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    });
    &URL
}

/// The URL of database `name` on that server, as the same superuser.
pub fn database_url(name: &str) -> String {
    let (server, _) = admin_url()
        .rsplit_once('/')
        .expect("a database URL ends with /<database>");
    format!("{server}/{name}")
}

/// Host and port of that server.
pub fn server() -> (String, u16) {
    let url = url::Url::parse(admin_url()).expect("TEST_POSTGRES_URL is a URL");
    (
        url.host_str().unwrap_or("127.0.0.1").to_owned(),
        url.port().unwrap_or(5432),
    )
}

/// A database of the test's own, dropped by [`TestDb::drop_db`].
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn create() -> Self {
        let name = format!("reset_test_{}", uuid::Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(admin_url())
            .await
            .unwrap_or_else(|e| {
                let (host, port) = server();
                panic!("PostgreSQL at {host}:{port} (scripts/test finds or starts one): {e}")
            });
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("create database");
        let url = database_url(&name);
        let pool = PgPool::connect(&url).await.expect("connect");
        Self { name, url, pool }
    }

    /// Creates the worker's tables, as a worker would at start-up.
    pub async fn migrated() -> Self {
        let db = Self::create().await;
        worker::store::Store::from_pool(db.pool.clone())
            .migrate()
            .await
            .expect("migrate");
        db
    }

    /// Whether the account's stored password hash verifies `password` (as a login would).
    pub async fn password_verifies(&self, id: &str, password: &str) -> bool {
        use argon2::{Argon2, PasswordHash, PasswordVerifier};
        let stored: Option<String> =
            sqlx::query_scalar("SELECT password_hash FROM accounts WHERE id = $1")
                .bind(id)
                .fetch_one(&self.pool)
                .await
                .expect("the account");
        stored.is_some_and(|stored| {
            PasswordHash::new(&stored).is_ok_and(|hash| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &hash)
                    .is_ok()
            })
        })
    }

    /// An account to add: `db.account("ada").add().await` adds `ada` with the email
    /// `ada@example.com`; `.email()`, `.name()` and `.locale()` change what it gets.
    pub fn account(&self, id: &str) -> NewAccount<'_> {
        NewAccount {
            db: self,
            id: id.to_owned(),
            email: format!("{id}@example.com"),
            display_name: None,
            locale: None,
        }
    }

    /// Adds accounts `{prefix}0` … `{prefix}{n-1}`, each with the email `{id}@example.com`.
    pub async fn add_numbered_accounts(&self, prefix: &str, n: i32) {
        sqlx::query(
            "INSERT INTO accounts (id, email)
             SELECT $1 || i, $1 || i || '@example.com' FROM generate_series(0, $2 - 1) AS i",
        )
        .bind(prefix)
        .bind(n)
        .execute(&self.pool)
        .await
        .expect("insert accounts");
    }

    /// Outcome counts of the processing records, e.g. `[(Sent, 3), (Throttled, 2)]`.
    pub async fn outcomes(&self) -> Vec<(Outcome, i64)> {
        sqlx::query_as(
            "SELECT outcome, count(*) FROM reset_requests GROUP BY outcome ORDER BY outcome",
        )
        .fetch_all(&self.pool)
        .await
        .expect("outcomes")
    }

    /// Waits until `count` events have a final outcome (or 10 s pass); returns the counts.
    pub async fn wait_for_outcomes(&self, count: i64) -> Vec<(Outcome, i64)> {
        let mut outcomes = Vec::new();
        for _ in 0..200 {
            outcomes = self.outcomes().await;
            let done: i64 = outcomes
                .iter()
                .filter(|(o, _)| *o != Outcome::Pending)
                .map(|(_, n)| n)
                .sum();
            if done >= count {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        outcomes
    }

    /// The only processing record's outcome and attempts.
    pub async fn only_record(&self) -> (Outcome, i32) {
        sqlx::query_as("SELECT outcome, attempts FROM reset_requests")
            .fetch_one(&self.pool)
            .await
            .expect("exactly one processing record")
    }

    /// Tokens that would still work (not used, not invalidated).
    pub async fn live_tokens(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM reset_tokens WHERE used_at IS NULL AND invalidated_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await
        .expect("count tokens")
    }

    pub async fn drop_db(self) {
        self.pool.close().await;
        if let Ok(mut admin) = PgConnection::connect(admin_url()).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin)
            .await;
        }
    }
}

/// A PostgreSQL server of the test's own (initdb into a temporary folder, a free port), for
/// tests that stop and restart it. Runs as the `postgres` user, as PostgreSQL insists.
#[derive(Debug)]
pub struct PrivatePostgres {
    pub port: u16,
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .expect("initdb");
        let port = crate::free_port();
        let dir = std::env::temp_dir().join(format!("pg-test-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let status = std::process::Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(status.success());
        let pg = Self { port, dir, bin };
        pg.as_postgres(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        pg.start_again();
        pg
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn as_postgres(&self, program: &str, args: &[&str]) {
        let output = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .output()
            .expect("runuser");
        assert!(
            output.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").display().to_string();
        self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    /// A fast shutdown: clients are disconnected, in-flight transactions rolled back.
    pub fn stop(&self) {
        self.as_postgres("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An account being described for [`TestDb::account`].
#[derive(Debug)]
#[must_use = "an account is added only by .add().await"]
pub struct NewAccount<'a> {
    db: &'a TestDb,
    id: String,
    email: String,
    display_name: Option<String>,
    locale: Option<String>,
}

impl NewAccount<'_> {
    pub fn email(mut self, email: &str) -> Self {
        email.clone_into(&mut self.email);
        self
    }

    pub fn name(mut self, display_name: &str) -> Self {
        self.display_name = Some(display_name.to_owned());
        self
    }

    pub fn locale(mut self, locale: &str) -> Self {
        self.locale = Some(locale.to_owned());
        self
    }

    pub async fn add(self) {
        sqlx::query(
            "INSERT INTO accounts (id, email, display_name, locale) VALUES ($1, $2, $3, $4)",
        )
        .bind(&self.id)
        .bind(&self.email)
        .bind(&self.display_name)
        .bind(&self.locale)
        .execute(&self.db.pool)
        .await
        .expect("insert account");
    }
}
