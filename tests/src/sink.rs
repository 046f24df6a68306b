//! The SMTP server the tests deliver to: `tests/smtp_sink.py` (aiosmtpd), run from `.venv`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::io::{BufRead, BufReader};

/// How the sink secures its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkTls {
    None,
    StartTls,
    Implicit,
}

/// A running SMTP sink writing each message it accepts to a folder.
#[derive(Debug)]
pub struct SmtpSink {
    pub port: u16,
    pub dir: PathBuf,
    tls: SinkTls,
    child: Child,
}

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    /// Envelope recipient.
    pub to: String,
    /// When the sink accepted it (Unix nanoseconds).
    pub received_at_ns: u128,
    pub subject: String,
    pub message_id: String,
    pub auto_submitted: Option<String>,
    pub text: String,
    pub html: String,
    pub raw: String,
}

impl ReceivedMail {
    /// The `token` query parameter of the first link in the text part.
    pub fn token(&self) -> String {
        let start = self.text.find("token=").expect("a link with a token") + "token=".len();
        self.text[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect()
    }

    /// The report link ("I did not ask for this", "This wasn't me") in the text part, whole.
    pub fn report_link(&self) -> String {
        self.text
            .split_whitespace()
            .find(|word| word.contains("/report?r="))
            .expect("a report link")
            .to_owned()
    }

    /// The secret of the report link ("I did not ask for this", "This wasn't me") in the
    /// text part.
    pub fn report_secret(&self) -> String {
        let start = self.text.find("/report?r=").expect("a report link") + "/report?r=".len();
        self.text[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(*c, '-' | '_' | '.'))
            .collect()
    }

    /// The one-time code: the text part's line that holds nothing else, 6 to 12 capital
    /// letters and digits with at most one space or hyphen between them.
    pub fn code(&self) -> String {
        let is_code = |line: &str| {
            let plain: String = line.chars().filter(|c| *c != '-' && *c != ' ').collect();
            line.chars().filter(|c| *c == '-' || *c == ' ').count() <= 1
                && !line.starts_with(['-', ' '])
                && !line.ends_with(['-', ' '])
                && (6..=12).contains(&plain.len())
                && plain
                    .chars()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        };
        let codes: Vec<&str> = self.text.lines().filter(|l| is_code(l)).collect();
        assert_eq!(codes.len(), 1, "one code alone on its line: {}", self.text);
        codes[0].to_owned()
    }

    /// The first http(s) link of the text part.
    pub fn link(&self) -> String {
        let start = self.text.find("http").expect("a link");
        self.text[start..]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

pub(crate) fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "no {}: run ./scripts/test (scripts/test-deps installs the SMTP sink)",
        python.display()
    );
    python
}

impl SmtpSink {
    pub fn start() -> Self {
        Self::start_with(SinkTls::None)
    }

    pub fn start_with(tls: SinkTls) -> Self {
        Self::spawn(tls, false)
    }

    /// A strict server: it answers a second EHLO in one session with `503 Duplicate
    /// HELO/EHLO`, as some servers do although RFC 5321 asks them to accept it.
    pub fn start_strict() -> Self {
        Self::spawn(SinkTls::None, true)
    }

    /// Python's stdlib `smtpd` (`tests/smtpd_sink.py`): strict, single-threaded, with a
    /// listen backlog of 5, so that a burst of new connections leaves some of them waiting
    /// many seconds for their greeting.
    pub fn start_smtpd() -> Self {
        Self::spawn_script("smtpd_sink.py", SinkTls::None, false)
    }

    fn spawn(tls: SinkTls, strict: bool) -> Self {
        Self::spawn_script("smtp_sink.py", tls, strict)
    }

    fn spawn_script(script: &str, tls: SinkTls, strict: bool) -> Self {
        let port = crate::free_port();
        let dir = std::env::temp_dir().join(format!("smtp-sink-{}", uuid::Uuid::now_v7().simple()));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
        let mut command = Command::new(python());
        command
            .arg(script)
            .args(["--port", &port.to_string(), "--dir"])
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        match tls {
            SinkTls::None => {}
            SinkTls::StartTls => {
                command.arg("--starttls");
            }
            SinkTls::Implicit => {
                command.arg("--implicit-tls");
            }
        }
        if strict {
            command.arg("--strict");
        }
        let mut child = command.spawn().expect("the SMTP sink starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the sink says it is ready");
        assert!(line.starts_with("ready"), "sink said {line:?}");
        Self {
            port,
            dir,
            tls,
            child,
        }
    }

    /// The `SMTP_URL` that reaches this sink.
    pub fn url(&self) -> String {
        match self.tls {
            SinkTls::None => format!("smtp://127.0.0.1:{}", self.port),
            SinkTls::StartTls => format!("smtp://localhost:{}?tls=required", self.port),
            SinkTls::Implicit => format!("smtps://localhost:{}", self.port),
        }
    }

    /// Makes the sink answer every recipient with `code` (451 or 550) until [`SmtpSink::heal`].
    pub fn fail_all(&self, code: u16) {
        std::fs::write(self.dir.join(format!("fail-{code}")), b"").expect("control file");
    }

    /// Makes the sink answer every EHLO and HELO with a 5xx until [`SmtpSink::heal`]: a
    /// failure of connection set-up, not of any message.
    pub fn fail_ehlo(&self) {
        std::fs::write(self.dir.join("fail-ehlo"), b"").expect("control file");
    }

    /// Ends [`SmtpSink::fail_all`] and [`SmtpSink::fail_ehlo`].
    pub fn heal(&self) {
        for control in ["fail-451", "fail-550", "fail-ehlo"] {
            let _ = std::fs::remove_file(self.dir.join(control));
        }
    }

    /// The reply code of every EHLO or HELO the sink answered so far, oldest first.
    pub fn ehlo_log(&self) -> Vec<u16> {
        std::fs::read_to_string(self.dir.join("ehlo.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split(' ').nth(1)?.parse().ok())
            .collect()
    }

    /// Every RCPT the sink answered: (Unix ns, reply code, address).
    pub fn rcpt_log(&self) -> Vec<(u128, u16, String)> {
        std::fs::read_to_string(self.dir.join("rcpt.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, ' ');
                Some((
                    parts.next()?.parse().ok()?,
                    parts.next()?.parse().ok()?,
                    parts.next()?.to_owned(),
                ))
            })
            .collect()
    }

    /// The CA that signed the sink's certificate, for `SMTP_CA_FILE`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Every message received so far, oldest first.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.iter().map(|f| parse(f)).collect()
    }

    /// Waits until at least `count` messages arrived (or `within` passed) and returns them all.
    pub async fn wait_for(&self, count: usize, within: Duration) -> Vec<ReceivedMail> {
        self.wait_until(within, |messages| messages.len() >= count)
            .await
    }

    /// Like [`Self::wait_for`], counting distinct recipients: duplicates (a redelivery after a
    /// crash) must not end the wait while some recipient still has no mail.
    pub async fn wait_for_recipients(&self, count: usize, within: Duration) -> Vec<ReceivedMail> {
        self.wait_until(within, |messages| {
            let recipients: std::collections::BTreeSet<&str> =
                messages.iter().map(|m| m.to.as_str()).collect();
            recipients.len() >= count
        })
        .await
    }

    async fn wait_until(
        &self,
        within: Duration,
        done: impl Fn(&[ReceivedMail]) -> bool,
    ) -> Vec<ReceivedMail> {
        let deadline = Instant::now() + within;
        loop {
            let messages = self.messages();
            if done(&messages) || Instant::now() > deadline {
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn parse(file: &Path) -> ReceivedMail {
    let raw = std::fs::read(file).expect("read message");
    let mail = mailparse::parse_mail(&raw).expect("a parsable message");
    let header = |name: &str| {
        mail.headers
            .iter()
            .find(|h| h.get_key().eq_ignore_ascii_case(name))
            .map(|h| h.get_value())
    };
    let mut text = String::new();
    let mut html = String::new();
    for part in mail.parts() {
        match part.ctype.mimetype.as_str() {
            "text/plain" => text = part.get_body().expect("text body"),
            "text/html" => html = part.get_body().expect("html body"),
            _ => {}
        }
    }
    ReceivedMail {
        to: header("X-Sink-Rcpt-To").unwrap_or_default(),
        received_at_ns: header("X-Sink-Received-At")
            .and_then(|v| v.parse().ok())
            .unwrap_or_default(),
        subject: header("Subject").unwrap_or_default(),
        message_id: header("Message-ID").unwrap_or_default(),
        auto_submitted: header("Auto-Submitted"),
        text,
        html,
        raw: String::from_utf8_lossy(&raw).into_owned(),
    }
}

/// A private Postfix instance (Debian's package, installed by `scripts/test-deps`) that
/// relays everything it accepts to an [`SmtpSink`]: a real MTA in front of the test server,
/// started and stopped by `tests/postfix_relay.sh`.
#[derive(Debug)]
pub struct PostfixRelay {
    pub port: u16,
    dir: PathBuf,
}

impl PostfixRelay {
    pub fn start(sink: &SmtpSink) -> Self {
        let port = crate::free_port();
        let dir = std::env::temp_dir().join(format!("postfix-{}", uuid::Uuid::now_v7().simple()));
        let output = Command::new(relay_script())
            .arg("start")
            .arg(&dir)
            .args([port.to_string(), sink.port.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .expect("tests/postfix_relay.sh runs");
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && said.contains("ready"),
            "Postfix did not start ({}): {said}",
            output.status
        );
        Self { port, dir }
    }

    /// The `SMTP_URL` that reaches this relay.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }
}

fn relay_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("postfix_relay.sh")
}

impl Drop for PostfixRelay {
    fn drop(&mut self) {
        let _ = Command::new(relay_script())
            .arg("stop")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
