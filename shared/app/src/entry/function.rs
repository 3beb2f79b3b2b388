//! The one interface between a Handoff function and whatever runs it: AWS Lambda (via
//! `lambda_runtime` in `functions/*/main.rs`) or the local emulator. Events and responses
//! are the JSON documents Lambda would pass, so the emulator exercises the same code path.

use async_trait::async_trait;
use serde_json::Value;

/// A failed invocation as Lambda reports it (the whole invocation failed, e.g. bad event).
#[derive(Debug, thiserror::Error)]
#[error("{error_type}: {message}")]
pub struct InvocationError {
    pub error_type: String,
    pub message: String,
}

impl InvocationError {
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self { error_type: error_type.into(), message: message.into() }
    }
}

#[async_trait]
pub trait FunctionHandler: Send + Sync {
    /// Handles one Lambda event and returns the Lambda response document:
    /// * HTTP API function: event = API Gateway HTTP API payload 2.0 request, response = payload 2.0 response;
    /// * SQS-fed functions: event = SQS event, response = `{"batchItemFailures": [...]}`;
    /// * scheduled functions: event = the schedule's `Input`, response = anything (ignored).
    async fn invoke(&self, event: Value) -> Result<Value, InvocationError>;
}
