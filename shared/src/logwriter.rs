//! Where log lines go: a shared buffer that a thread of its own writes out every few
//! milliseconds. A request's thread only copies its line in; it never waits for a write to a
//! terminal or pipe, and does not wake another thread for every line (on a small machine a
//! wake-up per line costs more than formatting the line).

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Longest a line waits in the buffer before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(10);
/// A buffer this full is written at once, without waiting for the next tick.
const WAKE_AT: usize = 256 * 1024;
/// A buffer this full makes loggers wait for the writer: lines are never dropped.
const MAX_PENDING: usize = 8 * 1024 * 1024;

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Vec<u8>>,
    /// Tells the writer a full buffer or the stop is waiting.
    ready: Condvar,
    /// Tells waiting loggers the buffer was taken.
    drained: Condvar,
    stop: AtomicBool,
}

/// The `MakeWriter` for the subscriber.
#[derive(Debug, Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Keeps the writer thread running; dropping it writes what is still buffered.
#[derive(Debug)]
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread for `out`.
pub fn batch_writer<W: Write + Send + 'static>(mut out: W) -> (BatchWriter, LogGuard) {
    let shared = Arc::new(Shared::default());
    let theirs = shared.clone();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            let mut taken = Vec::new();
            loop {
                let stopping = {
                    let guard = theirs
                        .pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    let (mut pending, _) = theirs
                        .ready
                        .wait_timeout_while(guard, FLUSH_EVERY, |p| {
                            p.len() < WAKE_AT && !theirs.stop.load(Ordering::Acquire)
                        })
                        .unwrap_or_else(PoisonError::into_inner);
                    std::mem::swap(&mut *pending, &mut taken);
                    theirs.drained.notify_all();
                    theirs.stop.load(Ordering::Acquire)
                };
                if !taken.is_empty() {
                    // Nowhere to report a failed write to but the log itself.
                    let _ = out.write_all(&taken).and_then(|()| out.flush());
                    taken.clear();
                }
                if stopping {
                    break;
                }
            }
        })
        .unwrap_or_else(|err| panic!("cannot start the log writer thread: {err}"));
    (
        BatchWriter {
            shared: shared.clone(),
        },
        LogGuard {
            shared,
            thread: Some(thread),
        },
    )
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.ready.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One line's way into the buffer (the subscriber writes each line with one call).
#[derive(Debug)]
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
        }
    }
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let shared = self.shared;
        let mut pending = shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while pending.len() + line.len() > MAX_PENDING
            && !pending.is_empty()
            && !shared.stop.load(Ordering::Acquire)
        {
            shared.ready.notify_one();
            pending = shared
                .drained
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        pending.extend_from_slice(line);
        if pending.len() >= WAKE_AT {
            shared.ready.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` whose contents the test can read.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_in_order_within_a_tick_and_the_rest_on_drop() {
        let out = Sink::default();
        let (writer, guard) = batch_writer(out.clone());
        writer.make_writer().write_all(b"one\n").expect("write");
        std::thread::sleep(FLUSH_EVERY * 5);
        assert_eq!(out.0.lock().expect("lock").as_slice(), b"one\n");
        for i in 0..10_000 {
            writer
                .make_writer()
                .write_all(format!("line {i}\n").as_bytes())
                .expect("write");
        }
        drop(guard);
        let written = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len(), 10_001);
        assert_eq!(lines[10_000], "line 9999");
    }

    #[test]
    fn a_full_buffer_makes_loggers_wait_instead_of_dropping_lines() {
        let out = Sink::default();
        let (writer, guard) = batch_writer(out.clone());
        let line = vec![b'x'; 64 * 1024];
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (writer, line) = (writer.clone(), line.clone());
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        writer.make_writer().write_all(&line).expect("write");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("logger");
        }
        drop(guard);
        assert_eq!(out.0.lock().expect("lock").len(), 4 * 100 * 64 * 1024);
    }
}
