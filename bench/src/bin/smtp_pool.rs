//! The worker's SMTP pool (TCP_NODELAY sockets under lettre's connection) against lettre's own
//! pooled transport, side by side in one run, into the benchmarks' SMTP sink: mails/s for the
//! same message, the same pool size and the same number of sends in flight.
//! `smtp-pool [mails] [rounds]` (3,000 and 3 by default); prints a Markdown table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

const POOL: u32 = 16;
const IN_FLIGHT: usize = 64;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mails: usize = args.next().map_or(Ok(3000), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    let arrivals = bench::sink::start(port)?;
    let message = Arc::new(
        Message::builder()
            .from("Example <no-reply@example.com>".parse()?)
            .to("ada@example.com".parse()?)
            .subject("Reset your password")
            .body("x".repeat(1500))?,
    );

    println!("| round | worker pool mails/s | lettre pool mails/s | worker / lettre |");
    println!("|---|---|---|---|");
    for round in 1..=rounds {
        // Whichever goes first in a round goes second in the next.
        let (mut ours_rate, mut theirs_rate) = (0.0, 0.0);
        for ours_now in [round % 2 == 1, round % 2 == 0] {
            if ours_now {
                let ours = worker_pool(port)?;
                ours_rate = run(mails, &message, &arrivals, |m| {
                    let ours = &ours;
                    // No claim to keep within here: a send may begin whenever.
                    let later = Instant::now() + Duration::from_secs(3600);
                    let window = worker::transport::Window {
                        start_by: later,
                        answered_by: later,
                    };
                    async move { ours.send(&m, "bench", window).await.is_ok() }
                })
                .await;
                ours.close().await;
            } else {
                let theirs: AsyncSmtpTransport<Tokio1Executor> =
                    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
                        .port(port)
                        .pool_config(PoolConfig::new().max_size(POOL))
                        .build();
                theirs_rate = run(mails, &message, &arrivals, |m| {
                    let theirs = &theirs;
                    async move { theirs.send((*m).clone()).await.is_ok() }
                })
                .await;
            }
        }
        println!(
            "| {round} | {ours_rate:.0} | {theirs_rate:.0} | {:.2} |",
            ours_rate / theirs_rate
        );
    }
    Ok(())
}

fn worker_pool(port: u16) -> Result<worker::transport::Mailer, Box<dyn std::error::Error>> {
    let settings = worker::config::MailSettings {
        templates_dir: "templates".into(),
        app_name: "Example".into(),
        support_email: "support@example.com".into(),
        mail_from: "Example <no-reply@example.com>".into(),
        smtp_url: Some(format!("smtp://127.0.0.1:{port}")),
        smtp_ca_file: None,
        smtp_pool_size: u16::try_from(POOL)?,
        smtp_timeout: Duration::from_secs(30),
        outbox: "outbox".into(),
    };
    Ok(worker::transport::Mailer::from_settings(&settings)?)
}

/// Sends `mails` copies of `message`, `IN_FLIGHT` at a time, and returns mails/s as the sink
/// counted them arrive.
async fn run<F, Fut>(
    mails: usize,
    message: &Arc<Message>,
    arrivals: &bench::sink::Arrivals,
    send: F,
) -> f64
where
    F: Fn(Arc<Message>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let before = bench::sink::received(arrivals);
    let started = Instant::now();
    let failed = futures::stream::iter((0..mails).map(|_| send(message.clone())))
        .buffer_unordered(IN_FLIGHT)
        .filter(|ok| std::future::ready(!ok))
        .count()
        .await;
    while bench::sink::received(arrivals) < before + mails - failed {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if failed > 0 {
        eprintln!("{failed} sends failed");
    }
    (mails - failed) as f64 / started.elapsed().as_secs_f64()
}
