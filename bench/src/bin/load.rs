//! End-to-end load: POSTs forgot-password for accounts `{prefix}0` … `{prefix}{n-1}` and
//! receives their mails itself, in an SMTP server (mailin-embedded) on `sink-port`, which
//! notes each mail's arrival when its final `.` line has come, on the same clock as the
//! request's sending. Prints one JSON object with throughput and request-to-mail latency.
//!
//! `load <api-url> <api-key> <n> <concurrency> <rate|max> <prefix> <sink-port>`
//! `load sink <sink-port> <n>`: only the SMTP server, until `n` mails have come; prints the
//! rate from the first to the last (to show it is not the bottleneck).
//!
//! With `LOAD_ACCEPTED_FILE` set, that file is created once every request is answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use bench::sink::now_ns;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// `load sink <port> <n>`.
async fn sink_only(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = args[2].parse()?;
    let n: usize = args[3].parse()?;
    let arrivals = bench::sink::start(port)?;
    println!("ready");
    while bench::sink::received(&arrivals) < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let times: Vec<u64> = arrivals
        .lock()
        .map(|a| a.iter().map(|(_, at)| *at).collect())
        .unwrap_or_default();
    let first = times.iter().min().copied().unwrap_or(0);
    let last = times.iter().max().copied().unwrap_or(0);
    let rate = n as f64 / (last.saturating_sub(first) as f64 / 1e9);
    println!("{}", serde_json::json!({ "mails": n, "mails_per_s": rate }));
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "sink" {
        return sink_only(&args).await;
    }
    if args.len() != 8 {
        return Err(
            "usage: load <api-url> <api-key> <n> <concurrency> <rate|max> <prefix> <sink-port> | load sink <sink-port> <n>"
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
    let arrivals = bench::sink::start(args[7].parse()?)?;

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

    let deadline = Instant::now() + Duration::from_secs(600);
    while bench::sink::received(&arrivals) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received: Vec<(usize, u64)> = arrivals
        .lock()
        .map(|a| {
            a.iter()
                .filter_map(|(to, at)| Some((recipient_index(to, &prefix)?, *at)))
                .collect()
        })
        .unwrap_or_default();
    let mut seen = vec![false; n];
    let mut latencies = Vec::new();
    let mut duplicates = 0;
    let mut last_ns = 0u64;
    let mut first_ns = u64::MAX;
    // The account of the mail that took longest, for its own timeline from the database.
    let mut slowest = (f64::MIN, 0usize);
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
        // Both times come from this process's clock; a mail cannot arrive before its
        // request was sent, so a negative difference would be a bug worth seeing.
        let sent = sent_at[*i].load(Ordering::Relaxed);
        let latency = (*at as f64 - sent as f64) / 1e6;
        if latency > slowest.0 {
            slowest = (latency, *i);
        }
        latencies.push(latency);
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
            "slowest_account": format!("{prefix}{}", slowest.1),
            // This process's CPU (it is the SMTP sink too), in clock ticks.
            "cpu_ticks": own_cpu_ticks(),
        })
    );
    Ok(())
}

/// User and system CPU this process has used, in clock ticks (`/proc/self/stat`).
fn own_cpu_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// The `i` of the first `{prefix}{i}@` in a recipient.
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
