//! The emulator's log lines at a terminal, and a hold on them: while the demo redraws its
//! live table in place, log lines wait (in memory, bounded) and are written after it.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static HOLDING: AtomicBool = AtomicBool::new(false);
static HELD: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// What a hold keeps at most; later lines are dropped, and the release says how many bytes.
const MAX_HELD_BYTES: usize = 1024 * 1024;
static DROPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The log writer: standard error, unless a [`LogHold`] is in force.
#[derive(Clone, Copy, Default)]
pub struct TerminalLog;

pub struct TerminalLogWriter;

impl Write for TerminalLogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if HOLDING.load(Ordering::Acquire) {
            if let Ok(mut held) = HELD.lock() {
                if held.len() + buf.len() <= MAX_HELD_BYTES {
                    held.extend_from_slice(buf);
                } else {
                    DROPPED.fetch_add(buf.len(), Ordering::Relaxed);
                }
                return Ok(buf.len());
            }
        }
        std::io::stderr().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for TerminalLog {
    type Writer = TerminalLogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        TerminalLogWriter
    }
}

/// Holds log lines until dropped, then writes them.
pub struct LogHold(());

pub fn hold_logs() -> LogHold {
    HOLDING.store(true, Ordering::Release);
    LogHold(())
}

impl Drop for LogHold {
    fn drop(&mut self) {
        HOLDING.store(false, Ordering::Release);
        let held = HELD.lock().map(|mut h| std::mem::take(&mut *h)).unwrap_or_default();
        let mut err = std::io::stderr();
        let _ = err.write_all(&held);
        let dropped = DROPPED.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let _ = writeln!(err, "({dropped} bytes of log lines were dropped while the demo drew its table)");
        }
    }
}
