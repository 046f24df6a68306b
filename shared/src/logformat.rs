//! Log lines for files and pipes: the same text as tracing-subscriber's default ("full")
//! format without colours, with less machinery behind it.
//!
//! The default format styles every field name and `=` through nu_ansi_term even when colours
//! are off, pads the level through `Formatter::pad` and works out the calendar date anew for
//! every line. For the api's access line that came to about 14,500 instructions per request
//! under callgrind, a fifth of all it spent per request (BENCHMARKS.md, change 29). Here
//! names and separators are written as they are and the timestamp's date and time are
//! reused within a second. A test checks the output against the default format's, line for
//! line.

use std::cell::RefCell;
use std::fmt::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event format for logs that do not go to a terminal.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainLines;

impl<S, N> FormatEvent<S, N> for PlainLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Events from the `log` crate carry their real target in fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        // The line is put together in a String of its own and handed to the writer whole: each
        // write through `Writer` is a call through a `dyn fmt::Write`, and a line made of ten
        // fields is some fifty of them.
        let mut line = String::with_capacity(256);
        write_now(&mut line)?;
        line.push_str(match *meta.level() {
            Level::TRACE => "TRACE ",
            Level::DEBUG => "DEBUG ",
            Level::INFO => " INFO ",
            Level::WARN => " WARN ",
            Level::ERROR => "ERROR ",
        });
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                line.push_str(span.metadata().name());
                seen = true;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(line, "{{{fields}}}")?;
                }
                line.push(':');
            }
            if seen {
                line.push(' ');
            }
        }
        line.push_str(meta.target());
        line.push_str(": ");
        let mut fields = Fields {
            writer: &mut line,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        line.push('\n');
        writer.write_str(&line)
    }
}

/// Writes an event's fields as the default format does: the message first, unnamed, then
/// `name=value` for the rest, values as their `Debug` shows them.
struct Fields<'w> {
    writer: &'w mut String,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_> {
    /// Starts a field: false if it is not to be written.
    fn begin(&mut self, field: &Field) -> bool {
        // `log.target` and the like were shown as the line's own target.
        if self.result.is_err() || field.name().starts_with("log.") {
            return false;
        }
        if self.first {
            self.first = false;
        } else {
            self.result = self.writer.write_char(' ');
        }
        self.result.is_ok()
    }

    fn name(&mut self, field: &Field) -> fmt::Result {
        let name = field.name();
        self.writer
            .write_str(name.strip_prefix("r#").unwrap_or(name))?;
        self.writer.write_char('=')
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else if value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            // Exactly what `Debug` writes for such a string, without its escaping machinery
            // (a few hundred instructions for an access line's short strings).
            if self.begin(field) {
                self.result = self.name(field).and_then(|()| {
                    self.writer.write_char('"')?;
                    self.writer.write_str(value)?;
                    self.writer.write_char('"')
                });
            }
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.begin(field) {
            self.result = self
                .name(field)
                .and_then(|()| write_decimal(self.writer, value, 1));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.begin(field) {
            self.result = self.name(field).and_then(|()| {
                if value < 0 {
                    self.writer.write_char('-')?;
                }
                write_decimal(self.writer, value.unsigned_abs(), 1)
            });
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.begin(field) {
            self.result = self
                .name(field)
                .and_then(|()| self.writer.write_str(if value { "true" } else { "false" }));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        match value.source() {
            Some(source) => self.record_debug(
                field,
                &format_args!(
                    "{} {}.sources={}",
                    Escaped(value),
                    field.name(),
                    SourceList(source)
                ),
            ),
            None => self.record_debug(field, &format_args!("{}", Escaped(value))),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.begin(field) {
            return;
        }
        self.result = if field.name() == "message" {
            // Control characters in a message could drive a terminal that shows the log.
            write!(EscapingWriter(self.writer), "{value:?}")
        } else {
            self.name(field)
                .and_then(|()| write!(self.writer, "{value:?}"))
        };
    }
}

/// A value's `Display`, terminal control characters escaped.
struct Escaped<'a>(&'a dyn fmt::Display);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapingWriter(f), "{}", self.0)
    }
}

/// An error's chain of sources, as `[first, second]`.
struct SourceList<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for SourceList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        let mut current = Some(self.0);
        while let Some(error) = current {
            list.entry(&format_args!("{}", Escaped(error)));
            current = error.source();
        }
        list.finish()
    }
}

/// Escapes what tracing-subscriber escapes in messages: ESC, BEL, BS, FF, DEL and the C1
/// controls.
struct EscapingWriter<'a, W: Write + ?Sized>(&'a mut W);

impl<W: Write + ?Sized> Write for EscapingWriter<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let needs_escape = |c: char| {
            matches!(
                c,
                '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'
            )
        };
        if !s.contains(needs_escape) {
            return self.0.write_str(s);
        }
        for c in s.chars() {
            match c {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                c if needs_escape(c) => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Writes the current time as `2026-11-28T11:21:50.173464Z ` (UTC, microseconds).
fn write_now(writer: &mut impl Write) -> fmt::Result {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    write_time(writer, now.as_secs(), now.subsec_micros())
}

thread_local! {
    /// The last second written and its `2026-11-28T11:21:50.`: most lines share it.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

fn write_time(writer: &mut impl Write, secs: u64, micros: u32) -> fmt::Result {
    SECOND.with_borrow_mut(|(cached, prefix)| {
        if *cached != secs {
            *cached = secs;
            *prefix = second_prefix(secs);
        }
        writer.write_str(prefix)
    })?;
    write_decimal(writer, u64::from(micros), 6)?;
    writer.write_str("Z ")
}

/// Writes `value` in decimal, zero-padded to `width` digits (at most 20), without going
/// through `core::fmt`'s integer formatting and padding.
fn write_decimal(writer: &mut (impl Write + ?Sized), value: u64, width: usize) -> fmt::Result {
    let mut digits = [b'0'; 20];
    let mut start = digits.len();
    let mut rest = value;
    while rest > 0 || start > digits.len() - width.clamp(1, 20) {
        start -= 1;
        digits[start] = b'0' + u8::try_from(rest % 10).unwrap_or(0);
        rest /= 10;
    }
    writer.write_str(std::str::from_utf8(&digits[start..]).map_err(|_| fmt::Error)?)
}

/// `2026-11-28T11:21:50.` for a Unix time in seconds.
fn second_prefix(secs: u64) -> String {
    let Ok(at) = i64::try_from(secs)
        .map_err(|_| ())
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).map_err(|_| ()))
    else {
        return format!("@{secs}.");
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Buffer {
        /// The lines written, each without its timestamp.
        fn lines(&self) -> Vec<String> {
            let text = String::from_utf8(self.0.lock().expect("buffer").clone()).expect("utf-8");
            text.lines()
                .map(|line| {
                    let (time, rest) = line.split_once(' ').expect("a timestamp");
                    assert!(time.ends_with('Z') && time.len() == 27, "{time}");
                    rest.to_owned()
                })
                .collect()
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer \x1b[31mfailure")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner cause")]
    struct Inner;

    fn emit() {
        let span = tracing::info_span!("event", seq = 7u64, event_id = tracing::field::Empty);
        span.record("event_id", tracing::field::display("e-1"));
        let _entered = span.enter();
        let inner = tracing::info_span!("send", attempt = 2);
        let _inner = inner.enter();
        tracing::info!(
            request_id = %"r-1",
            client = "web \"app\"",
            account = Some("a***@e***.com"),
            missing = None::<&str>,
            seq = 42u64,
            delta = -3i64,
            least = i64::MIN,
            ok = true,
            r#type = "reset",
            quote = "it's",
            backslash = "C:\\dir",
            tab = "a\tb",
            accent = "café",
            del = "\x7f",
            empty = "",
            elapsed = ?std::time::Duration::from_micros(1500),
            "request finished"
        );
        let err = Outer(Inner);
        tracing::warn!(
            error = &err as &(dyn std::error::Error + 'static),
            "sending failed"
        );
        tracing::error!("a message with \x1b[2J, \u{85} and \x07 in it: {}", 5);
    }

    #[test]
    fn lines_match_the_default_format_without_colours() {
        let ours = Buffer::default();
        let theirs = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(ours.clone())
            .event_format(PlainLines)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(theirs.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let (ours, theirs) = (ours.lines(), theirs.lines());
        assert_eq!(ours.len(), 3);
        assert_eq!(ours, theirs);
        assert!(ours[0].starts_with(" INFO event{seq=7 event_id=e-1}:send{attempt=2}: "));
        assert!(ours[2].contains("\\x1b[2J"), "{}", ours[2]);
    }

    #[test]
    fn decimals_match_core_fmt() {
        for value in [0, 5, 10, 999_999, 1_000_000, u64::MAX] {
            for width in [1, 6] {
                let mut ours = String::new();
                write_decimal(&mut ours, value, width).expect("write");
                assert_eq!(ours, format!("{value:0width$}"));
            }
        }
    }

    #[test]
    fn timestamps_are_utc_with_microseconds_across_seconds() {
        let mut out = String::new();
        write_time(&mut out, 1_795_864_882, 173_464).expect("write");
        write_time(&mut out, 1_795_864_882, 5).expect("write");
        write_time(&mut out, 1_795_864_883, 999_999).expect("write");
        assert_eq!(
            out,
            "2026-11-28T11:21:22.173464Z 2026-11-28T11:21:22.000005Z 2026-11-28T11:21:23.999999Z "
        );
    }
}
