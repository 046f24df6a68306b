//! What an outsider with no key and no token can make the api spend: memory for heads that
//! never end, connections, and CPU for passwords checked against tokens that do not exist.
//! Each runs against the api binary, as deployed, and reads what it costs from outside.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::{CODE_KEY, KEY, free_port, get, nats_url, templates_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The api binary with the test settings and `extra` on top, ready to serve.
async fn api_process(extra: &[(&str, &str)]) -> (Child, SocketAddr) {
    let port = free_port();
    let iso = e2e::Isolation::new();
    let mut command = Command::new(e2e::system::binary("api"));
    command
        .env("API_ADDR", format!("127.0.0.1:{port}"))
        .env("API_KEYS", format!("tests:{KEY}"))
        .env("RESET_CODE_KEY", CODE_KEY)
        .env("NATS_URL", nats_url())
        .env("TEMPLATES_DIR", templates_dir())
        .env("RESET_STREAM", &iso.stream)
        .env("RESET_SUBJECT_PREFIX", &iso.prefix)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    for (name, value) in extra {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("api starts");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut up = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() && get(addr, "/healthz").await.status == 200 {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !up {
        let _ = child.kill();
        let _ = child.wait();
        panic!("api process never answered /healthz");
    }
    (child, addr)
}

/// A line of `/proc/<pid>/status`, in kB.
fn proc_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field")
}

/// A hundred connections that each send most of a megabyte of request head and never finish
/// it take the api's memory up by a few megabytes, not by the megabyte each they send.
#[tokio::test]
async fn heads_that_never_end_cost_little_memory() {
    let (mut api, addr) = api_process(&[("API_HEADER_TIMEOUT", "30s")]).await;
    let pid = api.id();
    let before_kb = proc_kb(pid, "VmRSS:");
    let pad = "a".repeat(880 * 1024);
    let mut held = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = format!("POST /auth/forgot-password HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}");
        // The api stops reading (and answers 431) once its buffer is full: a write that
        // fails then is the bound at work.
        let _ = tokio::time::timeout(
            Duration::from_millis(200),
            stream.write_all(head.as_bytes()),
        )
        .await;
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let peak_kb = proc_kb(pid, "VmHWM:");
    let grew_mb = peak_kb.saturating_sub(before_kb) / 1024;
    drop(held);
    let _ = api.kill();
    let _ = api.wait();
    assert!(
        grew_mb < 32,
        "100 unfinished heads took the api from {before_kb} kB to a peak of {peak_kb} kB"
    );
}

/// Past API_MAX_CONNECTIONS a new connection is not served until another ends; then it is.
#[tokio::test]
async fn connections_past_the_cap_wait_for_one_to_end() {
    let (mut api, addr) = api_process(&[("API_MAX_CONNECTIONS", "3")]).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let mut late = TcpStream::connect(addr).await.expect("the kernel takes it");
    late.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let waited =
        tokio::time::timeout(Duration::from_millis(500), late.read_to_end(&mut answer)).await;
    assert!(
        waited.is_err(),
        "served past the cap: {}",
        String::from_utf8_lossy(&answer)
    );
    drop(idle.pop());
    tokio::time::timeout(Duration::from_secs(5), late.read_to_end(&mut answer))
        .await
        .expect("served once a connection ended")
        .expect("read");
    let _ = api.kill();
    let _ = api.wait();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}
