//! Turns AWS SDK errors into [`PortError`]s: infrastructure trouble worth retrying
//! (throttling, timeouts, connection failures, 5xx) is `Unavailable`; everything else
//! (validation, missing resources, access denied, bad input) is `Fault`.

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use handoff_ports::PortError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Unavailable,
    Fault,
}

/// Error codes that mean "try again later", whatever the HTTP status says.
const RETRYABLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "TransactionConflictException",
    "TransactionInProgressException",
    "InternalServerError",
    "InternalServerErrorException",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeoutException",
    "AWS.SimpleQueueService.ServiceUnavailable",
    "KMSThrottlingException",
];

/// Classifies a service answer by its error code and HTTP status.
pub(crate) fn classify_service(code: Option<&str>, status: Option<u16>) -> ErrorKind {
    if code.is_some_and(|c| RETRYABLE_CODES.contains(&c)) {
        return ErrorKind::Unavailable;
    }
    match status {
        Some(429) => ErrorKind::Unavailable,
        Some(s) if s >= 500 => ErrorKind::Unavailable,
        _ => ErrorKind::Fault,
    }
}

pub(crate) fn classify<E>(err: &SdkError<E, HttpResponse>) -> ErrorKind
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ConstructionFailure(_) => ErrorKind::Fault,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => ErrorKind::Unavailable,
        // The answer could not be read (cut connection, garbled body).
        SdkError::ResponseError(_) => ErrorKind::Unavailable,
        SdkError::ServiceError(ctx) => classify_service(ctx.err().code(), Some(ctx.raw().status().as_u16())),
        _ => ErrorKind::Unavailable,
    }
}

pub(crate) fn make(kind: ErrorKind, service: &'static str, message: String) -> PortError {
    match kind {
        ErrorKind::Unavailable => PortError::Unavailable { service, message },
        ErrorKind::Fault => PortError::Fault { service, message },
    }
}

/// The port error for a failed SDK call of `operation`.
pub(crate) fn sdk<E>(service: &'static str, operation: &str, err: SdkError<E, HttpResponse>) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let kind = classify(&err);
    make(kind, service, format!("{operation}: {}", DisplayErrorContext(&err)))
}

pub(crate) fn fault(service: &'static str, message: impl Into<String>) -> PortError {
    PortError::Fault { service, message: message.into() }
}

pub(crate) fn unavailable(service: &'static str, message: impl Into<String>) -> PortError {
    PortError::Unavailable { service, message: message.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_server_errors_are_unavailable() {
        assert_eq!(classify_service(Some("ThrottlingException"), Some(400)), ErrorKind::Unavailable);
        assert_eq!(classify_service(Some("ProvisionedThroughputExceededException"), Some(400)), ErrorKind::Unavailable);
        assert_eq!(classify_service(Some("SlowDown"), Some(503)), ErrorKind::Unavailable);
        assert_eq!(classify_service(None, Some(500)), ErrorKind::Unavailable);
        assert_eq!(classify_service(None, Some(429)), ErrorKind::Unavailable);
    }

    #[test]
    fn client_errors_are_faults() {
        assert_eq!(classify_service(Some("ValidationException"), Some(400)), ErrorKind::Fault);
        assert_eq!(classify_service(Some("ResourceNotFoundException"), Some(400)), ErrorKind::Fault);
        assert_eq!(classify_service(Some("AccessDeniedException"), Some(403)), ErrorKind::Fault);
        assert_eq!(classify_service(None, None), ErrorKind::Fault);
    }
}
