//! A webmail stand-in for browser tests: a site of its own (`http://localhost:PORT`, where the
//! api is `http://127.0.0.1:…`, another site to a browser) that shows a mail's link the ways
//! webmail does (a plain link, one that opens a new tab without opener or referrer, one
//! wrapped by a redirector), and serves whatever other page a test puts there. It records
//! every request it gets, so a test can check what reached it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the site answers at a path.
#[derive(Debug, Clone)]
enum Answer {
    Page(String),
    Redirect(String),
}

#[derive(Debug)]
pub struct Webmail {
    /// `http://localhost:PORT`.
    pub origin: String,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    seen: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Webmail {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let answers: Arc<Mutex<HashMap<String, Answer>>> = Arc::default();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let task = tokio::spawn(serve(listener, answers.clone(), seen.clone()));
        Self {
            origin: format!("http://localhost:{port}"),
            answers,
            seen,
            task,
        }
    }

    /// Shows a mail whose button is `link` at `/mail/<name>`: `#same-tab`, `#new-tab`
    /// (`target=_blank rel="noopener noreferrer"`) and `#wrapped` (through this site's
    /// redirector, `/go/<name>`, in a new tab). Returns the mail's address.
    pub fn add_mail(&self, name: &str, link: &str) -> String {
        let href = escape(link);
        let page = format!(
            "<!doctype html><html lang=\"en\"><title>Inbox</title>\
             <p>Reset your password</p>\
             <p><a id=\"same-tab\" href=\"{href}\">Choose a new password</a></p>\
             <p><a id=\"new-tab\" href=\"{href}\" target=\"_blank\" \
             rel=\"noopener noreferrer\">Choose a new password (new tab)</a></p>\
             <p><a id=\"wrapped\" href=\"/go/{name}\" target=\"_blank\" \
             rel=\"noopener noreferrer\">Choose a new password (wrapped)</a></p>"
        );
        let mut answers = self.answers.lock().expect("answers");
        answers.insert(format!("/mail/{name}"), Answer::Page(page));
        answers.insert(format!("/go/{name}"), Answer::Redirect(link.to_owned()));
        format!("{}/mail/{name}", self.origin)
    }

    /// Serves `html` at `/page/<name>`; returns its address.
    pub fn add_page(&self, name: &str, html: &str) -> String {
        self.answers
            .lock()
            .expect("answers")
            .insert(format!("/page/{name}"), Answer::Page(html.to_owned()));
        format!("{}/page/{name}", self.origin)
    }

    /// Every request head this site received, as sent.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for Webmail {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `&`, `<`, `>` and `"` as HTML attributes need them.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn serve(
    listener: TcpListener,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    seen: Arc<Mutex<Vec<String>>>,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let answers = answers.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
            seen.lock().expect("seen").push(head);
            let answer = answers.lock().expect("answers").get(&path).cloned();
            let response = match answer {
                Some(Answer::Page(html)) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{html}",
                    html.len()
                ),
                Some(Answer::Redirect(to)) => format!(
                    "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\
                     Connection: close\r\n\r\n"
                ),
                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned(),
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
