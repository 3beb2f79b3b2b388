//! SQS event-source mappings: what Lambda's poller does for a `Type: SQS` event.
//!
//! Receive a batch, hand it to the function as an SQS event, delete what succeeded. A
//! failed invocation deletes nothing, so the messages reappear after the visibility
//! timeout and the queue's redrive policy eventually moves them to the DLQ — the
//! behaviour the handlers' idempotency and the DLQ function are written against.

use crate::functions::Function;
use crate::template::{SqsEventSource, REGION};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A poller for one event source. Several run per source so one slow batch does not stall
/// the queue (Lambda scales pollers too).
#[derive(Clone)]
pub struct SqsPoller {
    pub sqs: aws_sdk_sqs::Client,
    pub function: Arc<Function>,
    pub source: SqsEventSource,
    pub queue_url: String,
    /// Long-poll wait per ReceiveMessage; bounds how fast a poller notices shutdown.
    pub wait_seconds: i32,
}

impl SqsPoller {
    /// Polls until `cancel` fires; a batch already received is always finished first.
    pub async fn run(self, cancel: CancellationToken) {
        let max = self.source.batch_size.clamp(1, 10) as i32;
        tracing::debug!(function = %self.function.spec.logical_id, queue = %self.queue_url, "poller started");
        while !cancel.is_cancelled() {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(max)
                .wait_time_seconds(self.wait_seconds)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .send()
                .await;
            let messages = match received {
                Ok(out) => out.messages.unwrap_or_default(),
                Err(e) => {
                    if !cancel.is_cancelled() {
                        tracing::warn!(queue = %self.queue_url, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "ReceiveMessage failed");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = cancel.cancelled() => {}
                        }
                    }
                    continue;
                }
            };
            tracing::trace!(queue = %self.queue_url, received = messages.len(), "ReceiveMessage");
            if messages.is_empty() {
                continue;
            }
            self.process(messages).await;
        }
        tracing::debug!(function = %self.function.spec.logical_id, queue = %self.queue_url, "poller stopped");
    }

    async fn process(&self, messages: Vec<Message>) {
        let event = sqs_event(&messages, &self.source.queue_arn);
        let ids: Vec<String> = messages.iter().map(|m| m.message_id().unwrap_or_default().to_string()).collect();
        let outcome = self.function.invoke(event).await;
        let succeeded = match &outcome {
            Ok(response) => succeeded_messages(&ids, response, self.source.report_batch_item_failures),
            Err(e) => {
                tracing::warn!(function = %self.function.spec.logical_id, error = %e, batch = ids.len(), "SQS batch invocation failed; messages will be retried");
                HashSet::new()
            }
        };
        if succeeded.len() < ids.len() {
            tracing::info!(function = %self.function.spec.logical_id, failed = ids.len() - succeeded.len(), batch = ids.len(), "messages left for retry");
        }
        let entries: Vec<DeleteMessageBatchRequestEntry> = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.message_id().is_some_and(|id| succeeded.contains(id)))
            .filter_map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
                    .ok()
            })
            .collect();
        if entries.is_empty() {
            return;
        }
        match self.sqs.delete_message_batch().queue_url(&self.queue_url).set_entries(Some(entries)).send().await {
            Ok(out) => {
                for f in out.failed() {
                    tracing::warn!(queue = %self.queue_url, id = f.id(), message = ?f.message(), "DeleteMessageBatch entry failed");
                }
            }
            Err(e) => {
                tracing::warn!(queue = %self.queue_url, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "DeleteMessageBatch failed")
            }
        }
    }
}

/// The SQS event Lambda passes to a function for a batch of messages.
pub fn sqs_event(messages: &[Message], queue_arn: &str) -> Value {
    let records: Vec<Value> = messages.iter().map(|m| sqs_record(m, queue_arn)).collect();
    json!({ "Records": records })
}

fn sqs_record(m: &Message, queue_arn: &str) -> Value {
    let mut attributes = Map::new();
    if let Some(attrs) = m.attributes() {
        for (k, v) in attrs {
            attributes.insert(k.as_str().to_string(), Value::String(v.clone()));
        }
    }
    let mut message_attributes = Map::new();
    if let Some(attrs) = m.message_attributes() {
        for (name, v) in attrs {
            let b64 = |b: &aws_sdk_sqs::primitives::Blob| base64::engine::general_purpose::STANDARD.encode(b.as_ref());
            let mut o = Map::new();
            if let Some(s) = v.string_value() {
                o.insert("stringValue".into(), Value::String(s.to_string()));
            }
            if let Some(b) = v.binary_value() {
                o.insert("binaryValue".into(), Value::String(b64(b)));
            }
            o.insert(
                "stringListValues".into(),
                Value::Array(v.string_list_values().iter().map(|s| Value::String(s.clone())).collect()),
            );
            o.insert(
                "binaryListValues".into(),
                Value::Array(v.binary_list_values().iter().map(|b| Value::String(b64(b))).collect()),
            );
            o.insert("dataType".into(), Value::String(v.data_type().to_string()));
            message_attributes.insert(name.clone(), Value::Object(o));
        }
    }
    let mut record = json!({
        "messageId": m.message_id().unwrap_or_default(),
        "receiptHandle": m.receipt_handle().unwrap_or_default(),
        "body": m.body().unwrap_or_default(),
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": m.md5_of_body().unwrap_or_default(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    });
    if let (Some(md5), Some(obj)) = (m.md5_of_message_attributes(), record.as_object_mut()) {
        obj.insert("md5OfMessageAttributes".into(), Value::String(md5.to_string()));
    }
    record
}

/// Which messages of a batch count as processed, given the function's response.
///
/// Without `ReportBatchItemFailures` any successful response means the whole batch
/// succeeded. With it, `batchItemFailures` names the failures; as in Lambda, a malformed
/// list (an entry without an `itemIdentifier`, or one not in the batch) fails the batch.
pub fn succeeded_messages(ids: &[String], response: &Value, report_batch_item_failures: bool) -> HashSet<String> {
    let all: HashSet<String> = ids.iter().cloned().collect();
    if !report_batch_item_failures {
        return all;
    }
    let failures = match response.get("batchItemFailures") {
        None | Some(Value::Null) => return all,
        Some(Value::Array(a)) => a,
        Some(_) => return HashSet::new(),
    };
    let mut failed = HashSet::new();
    for f in failures {
        match f.get("itemIdentifier").and_then(Value::as_str) {
            Some(id) if !id.is_empty() && all.contains(id) => {
                failed.insert(id.to_string());
            }
            _ => return HashSet::new(),
        }
    }
    all.difference(&failed).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::types::MessageAttributeValue;

    fn ids() -> Vec<String> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    #[test]
    fn partial_failures_keep_only_the_failed() {
        let r = json!({"batchItemFailures": [{"itemIdentifier": "b"}]});
        let ok = succeeded_messages(&ids(), &r, true);
        assert_eq!(ok, ["a", "c"].iter().map(|s| s.to_string()).collect());
    }

    #[test]
    fn empty_or_missing_failures_mean_all_succeeded() {
        assert_eq!(succeeded_messages(&ids(), &json!({"batchItemFailures": []}), true).len(), 3);
        assert_eq!(succeeded_messages(&ids(), &json!(null), true).len(), 3);
    }

    #[test]
    fn malformed_failures_fail_the_batch() {
        assert!(succeeded_messages(&ids(), &json!({"batchItemFailures": [{"itemIdentifier": "zzz"}]}), true).is_empty());
        assert!(succeeded_messages(&ids(), &json!({"batchItemFailures": [{}]}), true).is_empty());
    }

    #[test]
    fn without_report_batch_item_failures_the_response_is_ignored() {
        let r = json!({"batchItemFailures": [{"itemIdentifier": "b"}]});
        assert_eq!(succeeded_messages(&ids(), &r, false).len(), 3);
    }

    #[test]
    fn event_has_lambda_shape() {
        let m = Message::builder()
            .message_id("m1")
            .receipt_handle("rh")
            .body("{\"x\":1}")
            .md5_of_body("abc")
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "2")
            .message_attributes(
                "kind",
                MessageAttributeValue::builder().data_type("String").string_value("k").build().expect("attr"),
            )
            .build();
        let e = sqs_event(&[m], "arn:aws:sqs:us-east-1:123456789012:q");
        let r = &e["Records"][0];
        assert_eq!(r["messageId"], "m1");
        assert_eq!(r["receiptHandle"], "rh");
        assert_eq!(r["body"], "{\"x\":1}");
        assert_eq!(r["attributes"]["ApproximateReceiveCount"], "2");
        assert_eq!(r["messageAttributes"]["kind"]["stringValue"], "k");
        assert_eq!(r["messageAttributes"]["kind"]["dataType"], "String");
        assert_eq!(r["eventSource"], "aws:sqs");
        assert_eq!(r["eventSourceARN"], "arn:aws:sqs:us-east-1:123456789012:q");
        assert_eq!(r["awsRegion"], "us-east-1");
        assert_eq!(r["md5OfBody"], "abc");
        // It also deserializes as aws_lambda_events' SqsEvent, which the handlers use.
        let parsed: aws_lambda_events::event::sqs::SqsEvent = serde_json::from_value(e).expect("SqsEvent");
        assert_eq!(parsed.records.len(), 1);
    }
}
