//! Where log lines go: stderr, in batches. A request appends its line to a shared buffer
//! (one short lock, no system call); a writer thread, woken by the first line of a batch, writes
//! the buffer out [`FLUSH_EVERY`] later, as nginx's `access_log … buffer= flush=` does, and
//! sleeps while there is nothing to write. A non-blocking writer that wakes its thread for
//! every line (tracing-appender's) cost keyward about 10 µs of CPU per request at 30 000
//! requests/s (a futex wake, a `write(2)` and a park per line, `scripts/compare.sh`).
//!
//! Only access log lines (target [`ACCESS_TARGET`]) wait for the batch: any other event (a
//! warning, an error, a store going down) is written out at once, together with the batch
//! pending before it, so lines keep their order. Nothing is dropped: a buffer that reaches
//! [`HIGH_WATER`] is written out by the request that filled it (the log slows requests rather
//! than lose lines). Access lines reach stderr at most `FLUSH_EVERY` late;
//! dropping the [`LogWriterThread`] (on shutdown) writes out the rest.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the writer thread writes out what has accumulated.
pub const FLUSH_EVERY: Duration = Duration::from_millis(10);
/// A buffer this large is written out at once by the request that filled it.
pub const HIGH_WATER: usize = 256 * 1024;
/// The events that are batched: one per request.
pub use keyward_proxy::ACCESS_TARGET;

struct Shared {
    pending: Mutex<Vec<u8>>,
    /// Held while a batch is taken and written, so batches reach stderr in order.
    output: Mutex<()>,
    stop: AtomicBool,
    wake: Condvar,
}

impl Shared {
    /// Writes out everything pending, in order with any other flush.
    fn flush(&self) {
        let _in_order = self.output.lock().unwrap_or_else(|p| p.into_inner());
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if !batch.is_empty() {
            // Nowhere to report a failed write to stderr.
            let _ = std::io::stderr().lock().write_all(&batch);
        }
    }
}

/// The `MakeWriter` of the log subscriber, and the writer of one event.
#[derive(Clone)]
pub struct LogOutput {
    shared: Arc<Shared>,
    /// Write the line (and what is pending before it) out now, not with the next batch.
    immediate: bool,
}

/// The writer thread: dropping it writes out every pending line and stops the thread; keep it
/// until the process stops logging.
pub struct LogWriterThread {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogOutput {
    pub fn start() -> (LogOutput, LogWriterThread) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::with_capacity(64 * 1024)),
            output: Mutex::new(()),
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("keyward-log".into())
            .spawn(move || loop {
                // Asleep while there is nothing to write (no wake-ups on an idle sidecar);
                // woken by the first line of a batch, then the batch gathers for FLUSH_EVERY.
                let stop = {
                    let mut pending = worker.pending.lock().unwrap_or_else(|p| p.into_inner());
                    while pending.is_empty() && !worker.stop.load(Ordering::Acquire) {
                        pending = worker.wake.wait(pending).unwrap_or_else(|p| p.into_inner());
                    }
                    worker.stop.load(Ordering::Acquire)
                };
                if !stop {
                    std::thread::sleep(FLUSH_EVERY);
                }
                worker.flush();
                if stop || worker.stop.load(Ordering::Acquire) {
                    // Lines written after the last flush go out at once (see `write`).
                    worker.flush();
                    return;
                }
            })
            .ok();
        let output = LogOutput {
            shared: shared.clone(),
            immediate: true,
        };
        (output, LogWriterThread { shared, thread })
    }
}

impl Drop for LogWriterThread {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_all();
        match self.thread.take() {
            Some(thread) => {
                let _ = thread.join();
            }
            None => self.shared.flush(),
        }
    }
}

impl Write for LogOutput {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let (full, first) = {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let first = pending.is_empty();
            pending.extend_from_slice(line);
            (pending.len() >= HIGH_WATER, first)
        };
        if first && !self.immediate {
            // The first line of a batch wakes the writer thread: once per batch, not per line.
            self.shared.wake.notify_one();
        }
        // Once the thread has stopped (or could not start), every line goes out at once.
        if full || self.immediate || self.shared.stop.load(Ordering::Acquire) {
            self.shared.flush();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogOutput {
    type Writer = LogOutput;

    fn make_writer(&'a self) -> LogOutput {
        self.clone()
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LogOutput {
        LogOutput {
            shared: self.shared.clone(),
            immediate: meta.target() != ACCESS_TARGET,
        }
    }
}
