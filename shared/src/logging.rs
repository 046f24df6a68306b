//! Logging set-up and what keeps personal data out of it.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    Pretty,
    /// One JSON object per line, for a log pipeline.
    Json,
}

/// Logging settings.
#[derive(Debug, Clone, clap::Args)]
pub struct LogSettings {
    /// Log line format. Verbosity follows `RUST_LOG` (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
}

/// Keeps the log writer thread running; dropping it writes out what is still queued.
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// Installs the global subscriber, logging to stdout at `RUST_LOG` (default `info`). Keep the
/// guard until the process ends. A second call (several apps in one test process) installs no
/// second subscriber, though it starts a writer thread that stays idle.
pub fn init(settings: &LogSettings) -> LogGuard {
    let terminal = std::io::stdout().is_terminal();
    install(settings, std::io::stdout(), terminal, "info")
}

/// For commands whose stdout is their output: logs go to stderr, at `warn` unless `RUST_LOG`
/// or `verbose` asks for more.
pub fn init_to_stderr(settings: &LogSettings, verbose: bool) -> LogGuard {
    let terminal = std::io::stderr().is_terminal();
    let default = if verbose { "info" } else { "warn" };
    install(settings, std::io::stderr(), terminal, default)
}

/// `RUST_LOG` (else `default_level`), but the NATS client's connector at `warn` at most
/// unless `RUST_LOG` names it: its debug lines print the server URL whole, password and all.
fn filter(rust_log: Option<&str>, default_level: &str) -> EnvFilter {
    let wanted = rust_log
        .filter(|r| !r.trim().is_empty())
        .unwrap_or(default_level);
    let directives = if wanted.contains("async_nats") {
        wanted.to_owned()
    } else {
        format!("{wanted},async_nats::connector=warn")
    };
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new(default_level))
}

/// Lines are written by a thread of their own (tracing-appender), so a request never waits
/// for a terminal or pipe; when that thread falls behind, logging blocks rather than dropping
/// lines. Colours only on a terminal: escape codes in a file or pipe are noise.
fn install<W: std::io::Write + Send + 'static>(
    settings: &LogSettings,
    out: W,
    terminal: bool,
    default_level: &str,
) -> LogGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(out);
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref(), default_level);
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(terminal);
    let _ = match settings.log_format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    guard
}

/// Masks an account id or email for logs: enough to tell two requests apart, not enough to
/// recover the address. `ada.lovelace@example.com` becomes `a***@e***.com`.
pub fn mask_id(id: &str) -> String {
    // One string built in place: the api masks an id for every request's log line. Only
    // letters and digits of the id are shown, and a top-level domain only when it looks
    // like one, so that an id cannot write log fields or lines of its own
    // (`a@b.com status=200`).
    let first = |s: &str| s.chars().next().filter(|c| c.is_alphanumeric());
    let mut out = String::with_capacity(24);
    match id.rsplit_once('@') {
        Some((local, domain)) => {
            out.extend(first(local));
            out.push_str("***@");
            out.extend(first(domain));
            out.push_str("***");
            if let Some((_, tld)) = domain.rsplit_once('.')
                && (1..=24).contains(&tld.len())
                && tld.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                out.push('.');
                out.push_str(tld);
            }
        }
        None if id.chars().count() <= 4 => out.push_str("***"),
        None => {
            out.extend(first(id));
            out.push_str("***");
        }
    }
    out
}

/// Masks every email address inside a free text (an SMTP server's error often quotes the
/// recipient), so the text can be logged.
pub fn mask_addresses(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.contains('@') {
            out.push_str(&mask_id(word));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace()
            || matches!(
                c,
                '<' | '>' | '"' | '\'' | ',' | ';' | '(' | ')' | '[' | ']'
            )
        {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_inside_text_are_masked() {
        assert_eq!(
            mask_addresses("550 5.1.1 <ada.lovelace@example.com>: Recipient rejected"),
            "550 5.1.1 <a***@e***.com>: Recipient rejected"
        );
        assert_eq!(mask_addresses("no address here"), "no address here");
    }

    #[test]
    fn emails_keep_only_first_letters_and_tld() {
        assert_eq!(mask_id("ada.lovelace@example.com"), "a***@e***.com");
        assert_eq!(mask_id("x@localhost"), "x***@l***");
        assert_eq!(mask_id("@b.c"), "***@b***.c");
        assert_eq!(mask_id("a@"), "a***@***");
        assert_eq!(mask_id("Ünï@çà.de"), "Ü***@ç***.de");
    }

    #[test]
    fn an_id_cannot_write_log_fields_or_lines() {
        assert_eq!(mask_id("a@b.com status=200"), "a***@b***");
        assert_eq!(mask_id("a@b.com\nlevel=ERROR"), "a***@b***");
        assert_eq!(mask_id("\n@\t.com"), "***@***.com");
        assert_eq!(mask_id(" x y z"), "***");
    }

    #[test]
    fn plain_ids_keep_one_character_at_most() {
        assert_eq!(mask_id("user-12345"), "u***");
        assert_eq!(mask_id("abc"), "***");
        assert_eq!(mask_id(""), "***");
    }
}
