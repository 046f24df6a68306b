//! Helpers for the end-to-end tests: a real api on port 0 against the real nats-server, each
//! test on its own stream and subject prefix, a private nats-server for tests that kill it,
//! and a raw HTTP/1.1 client that can send exactly the bytes a test needs (half a body,
//! a lying Content-Length) and read the answer.

pub mod cluster;
pub mod compose;
pub mod db;
pub mod load;
pub mod sink;
pub mod system;
pub mod webhooks;
pub mod webmail;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::Duration;

use async_nats::jetstream;
use clap::Parser;
use shared::event::{ClientContext, ResetRequested};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The key tests authenticate with, and its label.
pub const KEY: &str = "test-key-0123456789abcdef";
pub const LABEL: &str = "tests";
/// The NATS the tests share: `TEST_NATS_URL` (scripts/test sets it to what scripts/services
/// found or started), else the machine's on 127.0.0.1:4222.
pub fn nats_url() -> &'static str {
    static URL: LazyLock<String> = LazyLock::new(|| {
        std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
    });
    &URL
}

/// The client of an event sent with the tests' API key, from no known address or agent.
pub fn client_context() -> ClientContext {
    ClientContext {
        ip: None,
        user_agent: None,
        api_key_label: LABEL.into(),
    }
}

/// A `ResetRequested` for `id`, as the api would publish it for the tests' API key.
pub fn reset_event(id: &str, request_id: &str) -> ResetRequested {
    ResetRequested::new(
        shared::account::AccountRef::parse(id).expect("a valid id"),
        request_id.into(),
        client_context(),
    )
}

/// A stream name and subject prefix no other test (or earlier run) uses.
#[derive(Debug, Clone)]
pub struct Isolation {
    pub stream: String,
    pub prefix: String,
}

impl Isolation {
    pub fn new() -> Self {
        let tag = uuid::Uuid::now_v7().simple().to_string();
        Self {
            stream: format!("TEST_{tag}"),
            prefix: format!("test.{tag}.reset"),
        }
    }

    /// Removes the test's stream from the NATS at `nats_url`, so reruns do not pile them up.
    pub async fn delete_stream(&self, nats_url: &str) {
        if let Ok(client) = async_nats::connect(nats_url).await {
            let _ = jetstream::new(client).delete_stream(&self.stream).await;
        }
    }
}

impl Default for Isolation {
    fn default() -> Self {
        Self::new()
    }
}

/// Api settings for a test: port 0, its own stream, rate limiting off, NATS on this machine.
/// The repository's templates: the worker's mails and the api's page.
pub fn templates_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../templates")
}

/// The secret the tests' apis and workers derive mail codes with (RESET_CODE_KEY).
pub const CODE_KEY: &str = "test-reset-code-key-0123456789abcdef";

pub fn api_settings(iso: &Isolation) -> api::Settings {
    let keys = format!("{LABEL}:{KEY},other:other-key-0123456789");
    api::Settings::try_parse_from([
        "api",
        "--addr=127.0.0.1:0",
        &format!("--api-keys={keys}"),
        &format!("--nats-url={}", nats_url()),
        &format!("--stream={}", iso.stream),
        &format!("--subject-prefix={}", iso.prefix),
        "--retention=1h",
        "--rate-limit=off",
        // Tests that need the database point the api at their own; the rest must not touch one.
        "--database-url=postgres://postgres@127.0.0.1:1/none",
        // The smallest Argon2 cost the library accepts: tests check behaviour, not cost.
        "--argon2-memory-kib=64",
        "--argon2-iterations=1",
        &format!("--templates-dir={}", templates_dir().display()),
        &format!("--reset-code-key={CODE_KEY}"),
    ])
    .expect("test settings parse")
}

/// A running api.
#[derive(Debug)]
pub struct TestApi {
    pub addr: SocketAddr,
    pub iso: Isolation,
    pub nats_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestApi {
    /// Starts an api with default test settings and waits until it is ready.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Starts an api with settings changed by `tweak` and waits until it is ready.
    pub async fn spawn_with(tweak: impl FnOnce(&mut api::Settings)) -> Self {
        let api = Self::start(tweak).await;
        api.wait_ready().await;
        api
    }

    /// Starts an api on a given stream and prefix and waits until it is ready.
    pub async fn spawn_in(iso: Isolation, tweak: impl FnOnce(&mut api::Settings)) -> Self {
        let api = Self::start_in(iso, tweak).await;
        api.wait_ready().await;
        api
    }

    /// Starts an api without waiting for it to be ready (NATS may be unreachable on purpose).
    pub async fn start(tweak: impl FnOnce(&mut api::Settings)) -> Self {
        Self::start_in(Isolation::new(), tweak).await
    }

    async fn start_in(iso: Isolation, tweak: impl FnOnce(&mut api::Settings)) -> Self {
        let mut settings = api_settings(&iso);
        tweak(&mut settings);
        let nats_url = settings.nats.nats_url.clone();
        let app = api::Application::build(settings).await.expect("api starts");
        let addr = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            iso,
            nats_url,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn wait_ready(&self) {
        for _ in 0..100 {
            if get(self.addr, "/readyz").await.status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("api at {} never became ready", self.addr);
    }

    /// Asks the api to shut down (as SIGTERM would) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts the api down, waits for it, and removes the test's stream.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        self.wait_stopped().await;
        self.iso.delete_stream(&self.nats_url).await;
    }

    /// Waits for a shutdown begun with [`TestApi::begin_shutdown`].
    pub async fn wait_stopped(&mut self) {
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("api stops within its shutdown deadline")
                .expect("api task");
        }
    }

    /// POSTs `body` to forgot-password with the test key and `content_type`.
    pub async fn forgot(&self, content_type: &str, body: &str) -> RawResponse {
        self.forgot_with(content_type, body, &[]).await
    }

    /// POSTs `{"id": id}` as JSON with the test key.
    pub async fn forgot_id(&self, id: impl AsRef<str>) -> RawResponse {
        let body = serde_json::json!({ "id": id.as_ref() }).to_string();
        self.forgot("application/json", &body).await
    }

    /// POSTs a JSON body to any path with the test key.
    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> RawResponse {
        let headers = [
            ("Authorization", format!("Bearer {KEY}")),
            ("Content-Type", "application/json".to_owned()),
            ("User-Agent", "tests/1.0".to_owned()),
        ];
        post(self.addr, path, &headers, &body.to_string()).await
    }

    /// Like [`TestApi::forgot`], with extra headers.
    pub async fn forgot_with(
        &self,
        content_type: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> RawResponse {
        let mut all = vec![
            ("Authorization", format!("Bearer {KEY}")),
            ("Content-Type", content_type.to_owned()),
        ];
        all.extend(headers.iter().map(|(k, v)| ((*k), (*v).to_owned())));
        post(self.addr, "/auth/forgot-password", &all, body).await
    }

    /// Every `ResetRequested` in the test's stream, in order, with its message headers.
    pub async fn events(&self) -> Vec<(ResetRequested, async_nats::HeaderMap)> {
        self.messages()
            .await
            .into_iter()
            .map(|message| {
                let event = ResetRequested::decode(&message.payload).expect("decodable event");
                (event, message.headers)
            })
            .collect()
    }

    /// Every message in the test's stream, in order, whatever its event type.
    pub async fn messages(&self) -> Vec<jetstream::message::StreamMessage> {
        let client = async_nats::connect(self.nats_url.as_str())
            .await
            .expect("nats");
        let js = jetstream::new(client);
        let mut stream = js.get_stream(&self.iso.stream).await.expect("stream");
        let state = stream.info().await.expect("info").state.clone();
        let mut messages = Vec::new();
        if state.messages == 0 {
            return messages;
        }
        for seq in state.first_sequence..=state.last_sequence {
            messages.push(stream.get_raw_message(seq).await.expect("message"));
        }
        messages
    }
}

/// A response as read off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The `message` of a `{code, message}` body, after checking `code` matches the status.
    pub fn message(&self) -> String {
        let json = self.json();
        assert_eq!(json["code"], self.status, "code matches status: {json}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        json["message"].as_str().expect("message").to_owned()
    }
}

/// Sends `request` as it is on a new connection and reads the response to the end
/// (requests built here say `Connection: close`).
pub async fn send_raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    read_response(&mut stream).await
}

/// Reads one response from a connection the server will close after it.
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response within 10 s")
        .expect("read");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> RawResponse {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response: {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    RawResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// The head of an authenticated JSON forgot-password request with `Connection: close`, with
/// `extra` header lines (each ending in `\r\n`) added; the body is the caller's to send.
pub fn forgot_head(extra: &str) -> String {
    format!(
        "POST /auth/forgot-password HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n{extra}\r\n"
    )
}

/// Opens a connection and sends `bytes` on it, leaving it open for more.
pub async fn open_with(addr: SocketAddr, bytes: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes.as_bytes()).await.expect("write");
    stream
}

/// Builds a request with `Connection: close` and a correct Content-Length.
pub fn request(method: &str, path: &str, headers: &[(&str, String)], body: &str) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if method != "GET" || !body.is_empty() {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

pub async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> RawResponse {
    send_raw(addr, &request("POST", path, headers, body)).await
}

pub async fn get(addr: SocketAddr, path: &str) -> RawResponse {
    send_raw(addr, &request("GET", path, &[], "")).await
}

/// A port nothing listens on.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A nats-server of the test's own, on a free port with its own store, for tests that stop it.
#[derive(Debug)]
pub struct PrivateNats {
    pub port: u16,
    binary: PathBuf,
    store: PathBuf,
    child: Option<Child>,
}

impl PrivateNats {
    /// The machine's nats-server (Debian's 2.9).
    pub fn start() -> Self {
        Self::start_binary(system_nats_server())
    }

    /// Any nats-server binary, e.g. [`latest_nats_server`].
    pub fn start_binary(binary: PathBuf) -> Self {
        let port = free_port();
        let store =
            std::env::temp_dir().join(format!("nats-test-{}", uuid::Uuid::now_v7().simple()));
        let mut nats = Self {
            port,
            binary,
            store,
            child: None,
        };
        nats.restart();
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and store, and waits until it accepts connections.
    pub fn restart(&mut self) {
        let child = Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts (it is installed on this machine)");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("private nats-server did not come up on port {}", self.port);
    }

    /// SIGTERM (a clean shutdown), and wait for the process to be gone.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// The nats-server this machine runs (Debian's 2.9.x).
pub fn system_nats_server() -> PathBuf {
    for candidate in [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ] {
        let path = PathBuf::from(candidate);
        if path.exists() {
            return path;
        }
    }
    PathBuf::from("nats-server")
}

/// A current nats-server (2.15), installed into `.venv` by `scripts/test-deps`; its path comes
/// from `NATS_SERVER_LATEST` or the workspace's `.venv`.
pub fn latest_nats_server() -> PathBuf {
    let path = std::env::var_os("NATS_SERVER_LATEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/nats-server")
        });
    assert!(
        path.exists(),
        "no current nats-server at {}: run ./scripts/test (scripts/test-deps installs it)",
        path.display()
    );
    path
}

/// Dead letters of a test's stream, with their headers.
pub async fn dead_letters(iso: &Isolation) -> Vec<async_nats::HeaderMap> {
    let js = jetstream::new(async_nats::connect(nats_url()).await.expect("nats"));
    let stream = js.get_stream(&iso.stream).await.expect("stream");
    let subject = format!("{}.dead", iso.prefix);
    let mut letters = Vec::new();
    let mut seq = 1;
    while let Ok(message) = stream.get_raw_message(seq).await {
        if message.subject.as_str() == subject {
            letters.push(message.headers);
        }
        seq += 1;
    }
    letters
}

/// Waits (up to 20 s) until the test's stream holds `count` dead letters; returns them all.
pub async fn wait_for_dead_letters(iso: &Isolation, count: usize) -> Vec<async_nats::HeaderMap> {
    for _ in 0..200 {
        let letters = dead_letters(iso).await;
        if letters.len() >= count {
            return letters;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    dead_letters(iso).await
}

/// The value of one series in a Prometheus text page (0 if absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}
