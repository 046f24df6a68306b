//! End-to-end load: POSTs forgot-password for accounts `{prefix}0` … `{prefix}{n-1}` and
//! waits for their mails in an SMTP sink's dump folder (one file per message; its
//! modification time is when the sink received it). Prints one JSON object with throughput
//! and request-to-mail latency.
//!
//! `load <api-url> <api-key> <n> <concurrency> <rate|max> <prefix> <sink-dir>`
//!
//! With `LOAD_ACCEPTED_FILE` set, that file is created once every request is answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 8 {
        return Err(
            "usage: load <api-url> <api-key> <n> <concurrency> <rate|max> <prefix> <sink-dir>"
                .into(),
        );
    }
    let url = format!("{}/auth/forgot-password", args[1].trim_end_matches('/'));
    let key = args[2].clone();
    let n: usize = args[3].parse()?;
    let concurrency: usize = args[4].parse()?;
    let rate: Option<f64> = if args[5] == "max" {
        None
    } else {
        Some(args[5].parse()?)
    };
    let prefix = args[6].clone();
    let sink_dir = std::path::PathBuf::from(&args[7]);

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http();
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let start_ns = now_ns();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, key, prefix) = (client.clone(), url.clone(), key.clone(), prefix.clone());
        let (sent_at, next, failures) = (sent_at.clone(), next.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                if let Some(rate) = rate {
                    let due = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let body = format!(r#"{{"id":"{prefix}{i}"}}"#);
                let request = http::Request::post(&url)
                    .header("Authorization", format!("Bearer {key}"))
                    .header("Content-Type", "application/json")
                    .body(Full::new(Bytes::from(body)));
                let Ok(request) = request else { continue };
                sent_at[i].store(now_ns(), Ordering::Relaxed);
                match client.request(request).await {
                    Ok(response) => {
                        let ok = response.status() == 200;
                        let _ = response.into_body().collect().await;
                        if !ok {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let accepted_secs = started.elapsed().as_secs_f64();
    // For a backlog run: the workers start once every request is accepted.
    if let Ok(path) = std::env::var("LOAD_ACCEPTED_FILE") {
        std::fs::write(path, b"")?;
    }

    // Wait for the mails: count files only while waiting (reading 20,000 files every poll
    // would make the driver the busiest process on the machine), then read them once.
    let deadline = Instant::now() + Duration::from_secs(600);
    while walk(&sink_dir).len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut received: Vec<(usize, u64)> = Vec::new();
    for entry in walk(&sink_dir) {
        let Ok(meta) = std::fs::metadata(&entry) else {
            continue;
        };
        let Ok(modified) = meta.modified() else {
            continue;
        };
        let at = modified
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let Ok(text) = std::fs::read_to_string(&entry) else {
            continue;
        };
        if let Some(i) = recipient_index(&text, &prefix) {
            received.push((i, at));
        }
    }
    let mut seen = vec![false; n];
    let mut latencies = Vec::new();
    let mut duplicates = 0;
    let mut last_ns = 0u64;
    let mut first_ns = u64::MAX;
    for (i, at) in &received {
        if *i >= n {
            continue;
        }
        if seen[*i] {
            duplicates += 1;
            continue;
        }
        seen[*i] = true;
        last_ns = last_ns.max(*at);
        first_ns = first_ns.min(*at);
        let sent = sent_at[*i].load(Ordering::Relaxed);
        latencies.push(at.saturating_sub(sent) as f64 / 1e6);
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let mailed = latencies.len();
    let span_secs = (last_ns.saturating_sub(start_ns)) as f64 / 1e9;
    println!(
        "{}",
        serde_json::json!({
            "requests": n,
            "failed_requests": failures.load(Ordering::Relaxed),
            "accept_rate_per_s": n as f64 / accepted_secs,
            "mails": mailed,
            "missing": n - mailed,
            "duplicates": duplicates,
            "mails_per_s": mailed as f64 / span_secs,
            // From the first mail to the last: the workers' own rate when they drain a backlog.
            "drain_mails_per_s": mailed as f64 / (last_ns.saturating_sub(first_ns) as f64 / 1e9),
            "latency_ms_p50": percentile(&latencies, 50.0),
            "latency_ms_p99": percentile(&latencies, 99.0),
            "latency_ms_max": latencies.last().copied().unwrap_or(f64::NAN),
        })
    );
    Ok(())
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // The type from the directory listing, not a stat of every file: polled every 200 ms
        // over 20,000 files, the stats made this driver take about a twentieth of the machine
        // while the workers drained a backlog.
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The `i` of the first `{prefix}{i}@` in a dumped message.
fn recipient_index(text: &str, prefix: &str) -> Option<usize> {
    let needle = prefix;
    let mut rest = text;
    while let Some(at) = rest.find(needle) {
        let after = &rest[at + needle.len()..];
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        if !digits.is_empty() && after[digits.len()..].starts_with('@') {
            return digits.parse().ok();
        }
        rest = &rest[at + needle.len()..];
    }
    None
}
