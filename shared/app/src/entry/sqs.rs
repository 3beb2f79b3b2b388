//! The parts of Lambda's SQS event and partial-batch response that the handlers use.

use crate::entry::function::InvocationError;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize)]
pub struct SqsEvent {
    #[serde(rename = "Records")]
    pub records: Vec<SqsRecord>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SqsRecord {
    pub message_id: String,
    pub body: String,
    /// Lambda spells it `eventSourceARN` (not camelCase).
    #[serde(default, rename = "eventSourceARN")]
    pub event_source_arn: Option<String>,
    #[serde(default)]
    pub attributes: std::collections::HashMap<String, String>,
}

impl SqsEvent {
    pub fn parse(event: Value) -> Result<Self, InvocationError> {
        serde_json::from_value(event)
            .map_err(|e| InvocationError::new("InvalidEvent", format!("not an SQS event: {e}")))
    }
}

/// `ReportBatchItemFailures`: only the failed messages return to the queue.
pub fn batch_response(results: impl IntoIterator<Item = (String, bool)>) -> Value {
    let failures: Vec<Value> =
        results.into_iter().filter(|(_, ok)| !ok).map(|(id, _)| json!({"itemIdentifier": id})).collect();
    json!({"batchItemFailures": failures})
}
