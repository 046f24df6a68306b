//! What the password policy costs per check, in the release profile: ordinary passwords,
//! and the worst input found (a run of l33t symbols), at the length the estimate reads and at
//! the longest password accepted.
//!
//!     cargo run --release -p bench --bin password_cost

use std::time::{Duration, Instant};

use api::reset::PasswordPolicy;

fn main() {
    let policy = PasswordPolicy {
        min_chars: 8,
        min_strength: 2,
    };
    let symbols = "4@8({[</369&#!1/|0$5+7%2/".repeat(6);
    let cases = [
        (
            "an ordinary password",
            "correct horse battery staple".to_owned(),
        ),
        ("l33t symbols, 64 characters", symbols[..64].to_owned()),
        ("l33t symbols, 100 characters", symbols[..100].to_owned()),
        ("l33t symbols, 128 characters", symbols[..128].to_owned()),
    ];
    println!("| password | checks | mean ms | slowest ms |");
    println!("|---|---|---|---|");
    for (name, password) in cases {
        let mut slowest = Duration::ZERO;
        let began = Instant::now();
        let runs = 20;
        for _ in 0..runs {
            let one = Instant::now();
            let outcome = policy.check_account(&password, "acct42", "someone@example.com");
            std::hint::black_box(outcome).ok();
            slowest = slowest.max(one.elapsed());
        }
        let mean = began.elapsed() / runs;
        println!(
            "| {name} | {runs} | {:.2} | {:.2} |",
            mean.as_secs_f64() * 1e3,
            slowest.as_secs_f64() * 1e3
        );
    }
}
