//! Retry policies and the failure classification every error carries.

use crate::error_code::ErrorCode;
use serde::{Deserialize, Serialize};

/// Who has to act on a failure: the customer fixes data (`Business`), or we/infrastructure
/// do (`System`, the ones to alert on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClassification {
    Business,
    System,
}

/// The outcome of one failed attempt, as the executor saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub classification: ErrorClassification,
    /// Connection errors, timeouts, 429 and 5xx: another attempt may succeed.
    pub retryable: bool,
    /// What kind of failure it is, from the catalogue ([`crate::error_code`]).
    #[serde(default)]
    pub code: ErrorCode,
    pub message: String,
}

/// A failure's message is kept to this many bytes: it goes to the step, the exchange, the
/// error list and the logs, and a step item must stay far below DynamoDB's 400 KB.
pub const MAX_FAILURE_MESSAGE_BYTES: usize = 1024;

/// `message` cut to [`MAX_FAILURE_MESSAGE_BYTES`] on a character boundary, marked as cut.
fn bounded(message: String) -> String {
    bounded_to(message, MAX_FAILURE_MESSAGE_BYTES)
}

/// `message` cut to at most `max` bytes on a character boundary, marked as cut.
pub fn bounded_to(message: String, max: usize) -> String {
    if message.len() <= max {
        return message;
    }
    const MARK: &str = "… (truncated)";
    let mut end = max.saturating_sub(MARK.len());
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &message[..end])
}

impl Failure {
    /// A connection-type error (system, retryable: connection refused, timeout, 429, 5xx):
    /// the kind that shows an endpoint `FailedRetrying`.
    pub fn is_connection_type(&self) -> bool {
        self.classification == ErrorClassification::System && self.retryable
    }

    /// Transient trouble on the remote side or ours: worth another attempt.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            classification: ErrorClassification::System,
            retryable: true,
            code: ErrorCode::Unavailable,
            message: bounded(message.into()),
        }
    }
    /// The data or the remote system's answer is at fault: retrying will not help. `code`
    /// says which fault, so the customer can look up what to fix.
    pub fn business(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { classification: ErrorClassification::Business, retryable: false, code, message: bounded(message.into()) }
    }
    /// Our side is broken in a way another attempt will not fix (e.g. misconfiguration).
    pub fn system(message: impl Into<String>) -> Self {
        Self {
            classification: ErrorClassification::System,
            retryable: false,
            code: ErrorCode::SystemFault,
            message: bounded(message.into()),
        }
    }
    /// The same failure under a more precise code (a timeout, say, rather than any system fault).
    pub fn coded(self, code: ErrorCode) -> Self {
        Self { code, ..self }
    }

    /// Classifies an HTTP answer of an external system (SPEC §2: 429 and 5xx retryable,
    /// other 4xx are business errors).
    pub fn from_http_status(status: u16, context: &str) -> Option<Self> {
        match status {
            200..=399 => None,
            429 | 500..=599 => Some(Self::transient(format!("{context} answered HTTP {status}"))),
            _ => Some(Self::business(ErrorCode::TargetRejected, format!("{context} answered HTTP {status}"))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    /// Exact delays.
    #[default]
    None,
    /// A random delay between 0 and the computed one (spreads retries of many exchanges).
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub interval_seconds: u64,
    pub backoff_rate: f64,
    pub max_interval_seconds: u64,
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            interval_seconds: 2,
            backoff_rate: 2.0,
            max_interval_seconds: 300,
            jitter: Jitter::None,
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `failed_attempts + 1`, after `failed_attempts` failures (≥ 1).
    /// `random` in [0, 1) is supplied by the caller so this stays pure.
    pub fn delay_seconds(&self, failed_attempts: u32, random: f64) -> u64 {
        let exponent = failed_attempts.saturating_sub(1).min(60) as i32;
        let raw = self.interval_seconds as f64 * self.backoff_rate.powi(exponent);
        let capped = raw.min(self.max_interval_seconds as f64).max(0.0);
        let delay = match self.jitter {
            Jitter::None => capped,
            Jitter::Full => capped * random.clamp(0.0, 1.0),
        };
        delay.round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exponential_backoff_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            interval_seconds: 2,
            backoff_rate: 2.0,
            max_interval_seconds: 10,
            jitter: Jitter::None,
        };
        let delays: Vec<u64> = (1..=5).map(|n| p.delay_seconds(n, 0.5)).collect();
        assert_eq!(delays, vec![2, 4, 8, 10, 10]);
    }

    #[test]
    fn http_status_classification() {
        assert_eq!(Failure::from_http_status(200, "x"), None);
        assert!(Failure::from_http_status(503, "x").unwrap().retryable);
        assert!(Failure::from_http_status(429, "x").unwrap().retryable);
        let f = Failure::from_http_status(400, "x").unwrap();
        assert!(!f.retryable);
        assert_eq!(f.classification, ErrorClassification::Business);
    }

    proptest! {
        #[test]
        fn jittered_delay_never_exceeds_the_cap(n in 1u32..100, r in 0.0f64..1.0, rate in 1.0f64..5.0) {
            let p = RetryPolicy { max_attempts: 100, interval_seconds: 3, backoff_rate: rate, max_interval_seconds: 60, jitter: Jitter::Full };
            prop_assert!(p.delay_seconds(n, r) <= 60);
        }
    }

    #[test]
    fn failure_messages_are_bounded_on_a_character_boundary() {
        let long = "é".repeat(2000);
        let failure = Failure::business(crate::error_code::ErrorCode::InvalidRecord, long);
        assert!(failure.message.len() <= MAX_FAILURE_MESSAGE_BYTES, "{}", failure.message.len());
        assert!(failure.message.ends_with("(truncated)"));
        assert_eq!(Failure::transient("short").message, "short");
    }
}
