//! The top-level docker-compose.yml, run without Docker: our binaries started natively with
//! exactly the environment compose gives each service (service names mapped to this
//! machine's addresses), NATS with the deployment's own config and users, PostgreSQL with the
//! deployment's own roles, and the test SMTP server in Mailpit's place. Then the whole
//! journey: request, mail, reset, password-changed mail. A variable missing from the compose
//! file, or a permission missing from a NATS user or database role, fails here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::compose::{self, root};
use e2e::db::{self, TestDb};
use e2e::sink::SmtpSink;
use e2e::system::binary;
use e2e::{free_port, get, latest_nats_server, post, request, send_raw};

/// `.env` with fresh passwords and no API_KEYS: the compose file's development instance then
/// takes the documentation's placeholder key.
fn dot_env() -> BTreeMap<String, String> {
    compose::dot_env(|_| uuid::Uuid::now_v7().simple().to_string())
}

/// Child processes killed when the test ends, however it ends.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Rewrites `host:port` of a compose service into the address standing in for it.
fn map_hosts(value: &str, hosts: &[(String, String)]) -> String {
    hosts
        .iter()
        .fold(value.to_owned(), |v, (from, to)| v.replace(from, to))
}

async fn wait_for(addr: SocketAddr, path: &str, log: &Path) {
    for _ in 0..300 {
        let listening = tokio::net::TcpStream::connect(addr).await.is_ok();
        if listening && get(addr, path).await.status == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let said = std::fs::read_to_string(log).unwrap_or_default();
    panic!("{addr} never answered 200 on {path}; its log:\n{said}");
}

/// NATS with the deployment's config and users, on ports and a store of the test's own (the
/// store directory is the one line changed: the image's /data is not here). Its port.
fn deployment_nats(dir: &Path, stack: &serde_yaml::Value, processes: &mut Processes) -> u16 {
    let nats_port = free_port();
    let config = std::fs::read_to_string(root().join("deploy/nats.conf")).expect("nats.conf");
    assert!(config.contains("store_dir: /data"));
    let store = format!("store_dir: \"{}\"", dir.join("jetstream").display());
    std::fs::write(
        dir.join("nats.conf"),
        config.replace("store_dir: /data", &store),
    )
    .expect("nats.conf copy");
    std::fs::copy(
        root().join("deploy/nats-accounts.conf"),
        dir.join("nats-accounts.conf"),
    )
    .expect("nats-accounts.conf copy");
    processes.0.push(
        Command::new(latest_nats_server())
            .arg("-c")
            .arg(dir.join("nats.conf"))
            .args(["-a", "127.0.0.1", "-p", &nats_port.to_string()])
            .args(["-m", &free_port().to_string()])
            .arg("-l")
            .arg(dir.join("nats.log"))
            .env_clear()
            .envs(compose::environment(stack, "nats"))
            .stdout(Stdio::null())
            .spawn()
            .expect("nats-server starts"),
    );
    nats_port
}

/// A client of the deployment's NATS as `user`, as the binaries connect (inboxes under the
/// user's name).
async fn connect_as(port: u16, user: &str, password: &str) -> async_nats::Client {
    let settings = shared::nats::NatsSettings {
        nats_url: format!("nats://{user}:{password}@127.0.0.1:{port}"),
    };
    shared::nats::connect(&settings, user)
        .await
        .expect("connect")
}

/// The deployment's NATS users hold what their code calls and no more: the worker's makes the
/// stream; the api's publishes and finds the stream ready, but cannot update, purge or delete
/// it, nor take a message off the worker's consumer.
#[tokio::test]
async fn the_api_user_publishes_but_cannot_change_the_stream_or_take_the_workers_messages() {
    use async_nats::jetstream::{self, consumer::pull};
    use shared::stream::StreamSettings;
    let vars = dot_env();
    let stack = compose::load(&root().join("docker-compose.yml"), &vars).expect("compose");
    let dir = std::env::temp_dir().join(format!("nats-users-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut processes = Processes(Vec::new());
    let port = deployment_nats(&dir, &stack, &mut processes);
    let worker = jetstream::new(connect_as(port, "worker", &vars["NATS_WORKER_PASSWORD"]).await);
    let mut api = jetstream::new(connect_as(port, "api", &vars["NATS_API_PASSWORD"]).await);
    api.set_timeout(Duration::from_secs(2));
    let settings = StreamSettings {
        stream: "AUTH_RESET".into(),
        subject_prefix: "auth.reset".into(),
        retention: Duration::from_secs(7 * 24 * 3600),
        replicas: 1,
        max_bytes: None,
    };
    let mut made = false;
    for _ in 0..50 {
        made = shared::stream::ensure_stream(&worker, &settings)
            .await
            .is_ok();
        if made {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(made, "the worker's user makes the stream");
    let consumer = worker
        .get_stream("AUTH_RESET")
        .await
        .expect("stream")
        .create_consumer(pull::Config {
            durable_name: Some("reset-worker".into()),
            filter_subject: "auth.reset.requested".into(),
            ..Default::default()
        })
        .await
        .expect("the worker's user makes its consumer");

    // What the api does: finds the stream as it should be, publishes, reads an event back.
    shared::stream::ensure_stream(&api, &settings)
        .await
        .expect("the stream is ready for the api without a write");
    let ack = api
        .publish("auth.reset.requested", "{}".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let stream = api.get_stream_no_info("AUTH_RESET").await.expect("stream");
    stream
        .get_raw_message(ack.sequence)
        .await
        .expect("read back");

    // What it may not: change the stream's settings, purge or delete it, take a message.
    let longer = StreamSettings {
        retention: Duration::from_secs(24 * 3600),
        ..settings.clone()
    };
    assert!(
        shared::stream::ensure_stream(&api, &longer).await.is_err(),
        "updated"
    );
    assert!(stream.purge().await.is_err(), "purged");
    assert!(api.delete_stream("AUTH_RESET").await.is_err(), "deleted");
    let taken = api
        .get_consumer_from_stream::<pull::Config, _, _>("reset-worker", "AUTH_RESET")
        .await;
    assert!(taken.is_err(), "the api looked at the worker's consumer");
    // The event is still there, for the worker alone.
    let mut messages = consumer
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .expect("fetch");
    let message = tokio::time::timeout(
        Duration::from_secs(5),
        futures::StreamExt::next(&mut messages),
    )
    .await
    .expect("a message within 5 s")
    .expect("one")
    .expect("message");
    assert_eq!(message.info().expect("info").stream_sequence, ack.sequence);
}

#[tokio::test]
async fn the_compose_stack_runs_with_exactly_its_env_and_walks_a_reset() {
    let vars = dot_env();
    let file = root().join("docker-compose.yml");
    let stack = compose::load(&file, &vars).expect("docker-compose.yml interpolates");
    let dir =
        std::env::temp_dir().join(format!("compose-native-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut processes = Processes(Vec::new());

    let nats_port = deployment_nats(&dir, &stack, &mut processes);

    // PostgreSQL: a fresh database, with the roles the postgres service's init script makes.
    let db = TestDb::create().await;
    let (pg_host, pg_port) = db::server();
    let mut postgres_env = compose::environment(&stack, "postgres");
    postgres_env.retain(|(k, _)| k != "POSTGRES_DB");
    let init = Command::new("sh")
        .arg(root().join("deploy/postgres/init-roles.sh"))
        .env_clear()
        .envs(postgres_env)
        .envs([
            ("POSTGRES_USER", "postgres"),
            ("POSTGRES_DB", db.name.as_str()),
            ("PGHOST", pg_host.as_str()),
            ("PGPORT", &pg_port.to_string()),
            ("PATH", "/usr/bin:/bin"),
        ])
        .output()
        .expect("init-roles.sh runs");
    assert!(init.status.success(), "init-roles.sh: {init:?}");

    let sink = SmtpSink::start();
    let sink_addr = sink.url().trim_start_matches("smtp://").to_owned();
    let api_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let worker_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let hosts: Vec<(String, String)> = [
        ("@nats:4222".to_owned(), format!("@127.0.0.1:{nats_port}")),
        (
            "@postgres:5432/reset".to_owned(),
            format!("@{pg_host}:{pg_port}/{}", db.name),
        ),
        ("mailpit:1025".to_owned(), sink_addr),
        ("0.0.0.0:8080".to_owned(), api_addr.to_string()),
        ("0.0.0.0:9090".to_owned(), worker_addr.to_string()),
    ]
    .into();
    let env_of = |service: &str| -> Vec<(String, String)> {
        compose::environment(&stack, service)
            .into_iter()
            .map(|(k, v)| (k, map_hosts(&v, &hosts)))
            .collect()
    };
    for (service, log) in [("worker", "worker.log"), ("api", "api.log")] {
        let env = env_of(service);
        let log = std::fs::File::create(dir.join(log)).expect("log file");
        // From the repository's root, as the image runs them from /app: templates/ beside.
        processes.0.push(
            Command::new(binary(service))
                .current_dir(root())
                .env_clear()
                .envs(env)
                .stdout(log)
                .stderr(Stdio::null())
                .spawn()
                .expect("binary starts"),
        );
    }
    wait_for(worker_addr, "/readyz", &dir.join("worker.log")).await;
    wait_for(api_addr, "/readyz", &dir.join("api.log")).await;

    // The journey, as the README tells it: the published curl, the mail, the reset.
    sqlx::query("INSERT INTO accounts (id, email) VALUES ('string', 'string@example.com')")
        .execute(&db.pool)
        .await
        .expect("account");
    let form = [
        ("Authorization", "Bearer REPLACE_BEARER_TOKEN".to_owned()),
        (
            "Content-Type",
            "application/x-www-form-urlencoded".to_owned(),
        ),
    ];
    let requested = post(
        api_addr,
        "/auth/forgot-password",
        &form,
        r#"{"id":"string"}"#,
    )
    .await;
    assert_eq!(requested.body, r#"{"code":200,"message":"OK"}"#);
    let mails = sink.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(mails.len(), 1, "the reset mail");
    // The link opens the api's own page (compose's RESET_URL, localhost:8080, is the api).
    let link = mails[0].link();
    let path = link
        .strip_prefix("http://localhost:8080")
        .unwrap_or_else(|| panic!("the link {link} is not the api's page"));
    let opened = send_raw(api_addr, &request("GET", path, &[], "")).await;
    assert_eq!(opened.status, 200, "{opened:?}");
    assert!(
        opened.body.contains(r#"name="token""#),
        "the form carries the token"
    );
    let form = [(
        "Content-Type",
        "application/x-www-form-urlencoded".to_owned(),
    )];
    let password = format!(
        "token={}&password=a+new+and+long+passphrase&confirm=a+new+and+long+passphrase",
        mails[0].token()
    );
    let reset = post(api_addr, "/reset-password", &form, &password).await;
    assert_eq!(reset.status, 200, "{}", reset.body);
    assert!(reset.body.contains("Your password was changed"));
    let mails = sink.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(mails.len(), 2, "the password-changed mail");
    // "This wasn't me" from that mail: the api reports it with its own rights (the event on
    // its NATS subject, the record through its database functions).
    let report = format!("r={}", mails[1].report_secret());
    let reported = post(api_addr, "/reset-password/report", &form, &report).await;
    assert_eq!(reported.status, 200, "{}", reported.body);
    assert!(reported.body.contains("We have told"), "{}", reported.body);
    // Those functions take the link's proof and find the account themselves: the api's role
    // cannot report for another account, whatever event it hands them.
    let api_db = env_of("api")
        .into_iter()
        .find(|(name, _)| name == "DATABASE_URL")
        .map(|(_, url)| url)
        .expect("the api's DATABASE_URL");
    let api_pool = sqlx::PgPool::connect(&api_db)
        .await
        .expect("the api's role");
    let changed: uuid::Uuid =
        sqlx::query_scalar("SELECT event_id FROM reset_requests WHERE kind = 'password_changed'")
            .fetch_one(&db.pool)
            .await
            .expect("the change's record");
    let forged = serde_json::json!({
        "account_id": "someone-else", "mail_event_id": changed, "kind": "change",
        "event_id": uuid::Uuid::nil(),
    });
    let refused = sqlx::query_scalar::<_, String>(
        "SELECT reset_report(NULL, $1, 0, $2, 'auth.reset.reported', $3)",
    )
    .bind(changed)
    .bind(uuid::Uuid::nil())
    .bind(forged.to_string().into_bytes())
    .fetch_one(&api_pool)
    .await;
    assert!(refused.is_err(), "{refused:?}");
    api_pool.close().await;

    // The operator tools work with the worker's credentials, as `docker compose exec worker
    // worker replay` runs them.
    let replay = Command::new(binary("worker"))
        .current_dir(root())
        .env_clear()
        .envs(env_of("worker"))
        .args(["replay", "--since", "1h", "--json"])
        .output()
        .expect("worker replay runs");
    assert!(replay.status.success(), "{replay:?}");
    let stdout = String::from_utf8_lossy(&replay.stdout);
    assert!(stdout.contains(r#""outcome":"sent""#), "{stdout}");

    // Each side did that within its own rights, and those rights are narrow.
    let nats = std::fs::read_to_string(dir.join("nats.log")).unwrap_or_default();
    assert!(!nats.to_lowercase().contains("violation"), "{nats}");
    let api_may: (bool, bool, bool) = sqlx::query_as(
        "SELECT has_table_privilege('reset_api', 'reset_requests', 'SELECT'),
                has_table_privilege('reset_api', 'accounts', 'INSERT'),
                has_schema_privilege('reset_api', 'public', 'CREATE')",
    )
    .fetch_one(&db.pool)
    .await
    .expect("privileges");
    assert_eq!(api_may, (false, false, false));

    drop(processes);
    let _ = std::fs::remove_dir_all(&dir);
}
