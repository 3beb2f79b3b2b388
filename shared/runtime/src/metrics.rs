//! Where the figures of [`handoff_app::metrics`] go: one recorder per process (the
//! maintained `metrics_cloudwatch_embedded` collector, installed as the global recorder with
//! the first function), flushed after every invocation as CloudWatch embedded-metric-format
//! documents: to stdout in Lambda, where CloudWatch Logs turns them into metrics; to a
//! receiver of the emulator's, which reads them as CloudWatch would.

use async_trait::async_trait;
use futures::FutureExt;
use handoff_app::entry::function::{FunctionHandler, InvocationError};
use handoff_core::notice::ErrorReport;
use handoff_ports::ErrorTracker;
use metrics_cloudwatch_embedded::Collector;
use serde_json::Value;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};

/// The namespace when `HANDOFF_METRICS_NAMESPACE` is not set.
pub const DEFAULT_NAMESPACE: &str = "Handoff";

/// Takes each flushed EMF document (one JSON object).
pub type DocumentReceiver = Arc<dyn Fn(&str) + Send + Sync>;

/// The process's figures.
pub struct Metrics {
    /// `None` if another recorder was installed first (figures go there).
    emf: Option<&'static Collector>,
    /// Where flushed documents go; none: stdout, one line each (Lambda's log capture).
    receiver: Mutex<Option<DocumentReceiver>>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's figures, installing the recorder on first use under `namespace` (later
/// calls return the same, whatever they pass: one recorder per process).
pub fn install(namespace: &str) -> &'static Metrics {
    METRICS.get_or_init(|| {
        let emf = metrics_cloudwatch_embedded::Builder::new().cloudwatch_namespace(namespace.to_string()).init();
        if let Err(e) = &emf {
            tracing::warn!(error = %e, "metrics recorder not installed; figures are not reported");
        }
        Metrics { emf: emf.ok(), receiver: Mutex::new(None) }
    })
}

impl Metrics {
    /// Sends flushed documents to `receiver` instead of stdout (the emulator).
    pub fn send_to(&self, receiver: DocumentReceiver) {
        *self.receiver.lock().unwrap_or_else(|p| p.into_inner()) = Some(receiver);
    }

    /// Writes what was recorded since the last flush, one EMF document per label set.
    pub fn flush(&self) {
        let Some(emf) = self.emf else { return };
        let mut buffer = Vec::new();
        if let Err(e) = emf.flush(&mut buffer) {
            tracing::warn!(error = %e, "metrics could not be flushed");
            return;
        }
        if buffer.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&buffer);
        let receiver = self.receiver.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match receiver {
            Some(receiver) => text.lines().filter(|l| !l.trim().is_empty()).for_each(|d| receiver(d)),
            None => {
                use std::io::Write;
                let _ = std::io::stdout().lock().write_all(text.as_bytes());
            }
        }
    }
}

/// A function whose every invocation ends with a [`Metrics::flush`], and whose panics are
/// reported to the error tracker (then answered as the error `Panic`, as the Lambda
/// runtime would answer them).
pub struct Metered {
    pub inner: Arc<dyn FunctionHandler>,
    pub metrics: &'static Metrics,
    pub tracker: Arc<dyn ErrorTracker>,
}

#[async_trait]
impl FunctionHandler for Metered {
    async fn invoke(&self, event: Value) -> Result<Value, InvocationError> {
        let outcome = match AssertUnwindSafe(self.inner.invoke(event)).catch_unwind().await {
            Ok(outcome) => outcome,
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                tracing::error!(panic = %message, "the function panicked");
                self.tracker.report(&ErrorReport::panic(&message)).await;
                Err(InvocationError::new("Panic", message))
            }
        };
        self.metrics.flush();
        outcome
    }
}

/// A panic's text (`panic!` carries a `&str` or a `String`).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_ports::memory::MemoryErrorTracker;

    struct Panics;

    #[async_trait]
    impl FunctionHandler for Panics {
        async fn invoke(&self, event: Value) -> Result<Value, InvocationError> {
            let items: Vec<u32> = serde_json::from_value(event).unwrap_or_default();
            // An index out of bounds: the kind of bug that panics.
            Ok(Value::from(items[3]))
        }
    }

    #[tokio::test]
    async fn a_panic_is_reported_and_answered_as_an_error() {
        let tracker = Arc::new(MemoryErrorTracker::default());
        let metered =
            Metered { inner: Arc::new(Panics), metrics: install(DEFAULT_NAMESPACE), tracker: tracker.clone() };
        let answer = metered.invoke(serde_json::json!([1])).await.expect_err("a panic is an error");
        assert_eq!(answer.error_type, "Panic");
        let reports = tracker.reports();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].kind, "Panic");
        assert!(reports[0].message.contains("index out of bounds"), "{:?}", reports[0]);
        assert_eq!(metered.invoke(serde_json::json!([1, 2, 3, 4])).await.expect("no panic"), Value::from(4));
    }
}
