//! [`HandoffQueue`] on SQS: one standard queue per worker family.
//!
//! The body is the JSON of [`QueueMessage`]: a [`HandoffMessage`] with the message
//! attributes `exchangeId` and `subStep`, or `{"timer": <Timer>}` on the control queue with
//! the attributes `exchangeId` and `kind` (the timer's kind, e.g. `stepTimeout`). The
//! attributes (strings) are for operators looking at a queue or a DLQ.
//!
//! `send_many` uses SendMessageBatch: ≤ 10 entries and ≤ 256 KB (bodies plus attributes)
//! per request; entries that fail are sent once more, then reported.

use crate::error;
use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;
use handoff_core::handoff::{HandoffMessage, QueueMessage, Timer};
use handoff_core::plan::WorkerFamily;
use handoff_ports::{HandoffQueue, PortResult};
use std::collections::HashMap;
use std::ops::Range;

const SERVICE: &str = "sqs";
/// SQS's largest message (body plus attributes).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// SQS's longest delivery delay.
pub const MAX_DELAY_SECONDS: u32 = 900;
/// SQS's most entries in one SendMessageBatch (whose messages together stay within
/// [`MAX_MESSAGE_BYTES`]).
pub const MAX_BATCH_ENTRIES: usize = 10;

/// Sends hand-off messages to the queue of each worker family.
#[derive(Debug, Clone)]
pub struct SqsHandoffQueue {
    client: Client,
    queue_urls: HashMap<WorkerFamily, String>,
}

impl SqsHandoffQueue {
    pub fn new(client: Client, queue_urls: HashMap<WorkerFamily, String>) -> Self {
        Self { client, queue_urls }
    }

    async fn send_encoded(&self, url: &str, (body, attributes): Encoded, delay_seconds: u32) -> PortResult<()> {
        self.client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .set_message_attributes(Some(attributes))
            .delay_seconds(delay_seconds.min(MAX_DELAY_SECONDS) as i32)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| error::sdk(SERVICE, "SendMessage", e))
    }

    /// Sends one batch (≤ 10 entries, ≤ 256 KB), sending the entries that fail once more;
    /// the entries that failed twice: how many, whether SQS blamed the sender, and the
    /// first reason.
    async fn send_batch(&self, url: &str, batch: &[Encoded]) -> PortResult<Option<BatchFailure>> {
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut failure = None;
        for round in 0..2 {
            if round > 0 {
                // Failed entries are mostly throttling or internal errors: give SQS a moment.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            let entries = pending
                .iter()
                .map(|&i| {
                    let (body, attributes) = &batch[i];
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body.clone())
                        .set_message_attributes(Some(attributes.clone()))
                        .delay_seconds(0)
                        .build()
                        .map_err(|e| error::fault(SERVICE, format!("cannot build batch entry: {e}")))
                })
                .collect::<PortResult<Vec<_>>>()?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| error::sdk(SERVICE, "SendMessageBatch", e))?;
            let failed = out.failed();
            if failed.is_empty() {
                return Ok(None);
            }
            pending = failed.iter().filter_map(|f| f.id().parse().ok()).filter(|&i| i < batch.len()).collect();
            pending.sort_unstable();
            pending.dedup();
            let first = &failed[0];
            failure = Some(BatchFailure {
                count: failed.len(),
                sender_fault: failed.iter().any(|f| f.sender_fault()),
                reason: format!("{}: {}", first.code(), first.message().unwrap_or_default()),
            });
            if pending.is_empty() {
                break;
            }
        }
        Ok(failure)
    }

    fn url(&self, family: WorkerFamily) -> PortResult<&str> {
        self.queue_urls
            .get(&family)
            .map(String::as_str)
            .ok_or_else(|| error::fault(SERVICE, format!("no queue configured for worker family '{}'", family.name())))
    }
}

type Encoded = (String, HashMap<String, MessageAttributeValue>);

/// Entries of one batch that could not be sent.
#[derive(Debug)]
struct BatchFailure {
    count: usize,
    sender_fault: bool,
    reason: String,
}

/// The size SQS counts for a message: its body and its attributes (names, types, values).
fn size_of(body: &str, attributes: impl IntoIterator<Item = (usize, usize)>) -> usize {
    body.len() + attributes.into_iter().map(|(name, value)| name + value + "String".len()).sum::<usize>()
}

fn encoded_size((body, attributes): &Encoded) -> usize {
    size_of(body, attributes.iter().map(|(name, v)| (name.len(), v.string_value().map_or(0, str::len))))
}

/// Consecutive batches of messages of these sizes: ≤ [`MAX_BATCH_ENTRIES`] each, and ≤
/// [`MAX_MESSAGE_BYTES`] together (a message alone is always within the limit).
pub(crate) fn batch_ranges(sizes: &[usize]) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut total) = (0, 0);
    for (i, &size) in sizes.iter().enumerate() {
        if i > start && (i - start == MAX_BATCH_ENTRIES || total + size > MAX_MESSAGE_BYTES) {
            ranges.push(start..i);
            (start, total) = (i, 0);
        }
        total += size;
    }
    if start < sizes.len() {
        ranges.push(start..sizes.len());
    }
    ranges
}

/// The body and attributes of a message, checked against the SQS size limit.
pub(crate) fn encode(message: &HandoffMessage) -> PortResult<Encoded> {
    let body =
        serde_json::to_string(message).map_err(|e| error::fault(SERVICE, format!("cannot encode message: {e}")))?;
    with_attributes(body, [("exchangeId", message.exchange_id.to_string()), ("subStep", message.sub_step.to_string())])
}

/// The body (`{"timer": ...}`, i.e. [`QueueMessage::Timer`]) and attributes of a timer message.
pub(crate) fn encode_timer(timer: &Timer) -> PortResult<Encoded> {
    let message = QueueMessage::Timer { timer: timer.clone() };
    let body =
        serde_json::to_value(&message).map_err(|e| error::fault(SERVICE, format!("cannot encode timer: {e}")))?;
    let kind = body
        .pointer("/timer/kind")
        .and_then(|k| k.as_str())
        .ok_or_else(|| error::fault(SERVICE, "an encoded timer has no kind"))?
        .to_string();
    with_attributes(body.to_string(), [("exchangeId", timer.exchange_id.to_string()), ("kind", kind)])
}

fn with_attributes<const N: usize>(body: String, attributes: [(&str, String); N]) -> PortResult<Encoded> {
    let size = size_of(&body, attributes.iter().map(|(name, value)| (name.len(), value.len())));
    if size > MAX_MESSAGE_BYTES {
        return Err(error::fault(
            SERVICE,
            format!("message of {size} bytes exceeds the SQS limit of {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    let attribute = |value: String| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .map_err(|e| error::fault(SERVICE, format!("cannot build message attribute: {e}")))
    };
    let attributes = attributes
        .into_iter()
        .map(|(name, value)| Ok((name.to_string(), attribute(value)?)))
        .collect::<PortResult<HashMap<_, _>>>()?;
    Ok((body, attributes))
}

#[async_trait]
impl HandoffQueue for SqsHandoffQueue {
    async fn send(&self, family: WorkerFamily, message: &HandoffMessage, delay_seconds: u32) -> PortResult<()> {
        self.send_encoded(self.url(family)?, encode(message)?, delay_seconds).await
    }

    async fn send_timer(&self, timer: &Timer, delay_seconds: u32) -> PortResult<()> {
        self.send_encoded(self.url(WorkerFamily::Control)?, encode_timer(timer)?, delay_seconds).await
    }

    async fn send_many(&self, family: WorkerFamily, messages: &[HandoffMessage]) -> PortResult<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let url = self.url(family)?;
        let encoded = messages.iter().map(encode).collect::<PortResult<Vec<_>>>()?;
        let sizes: Vec<usize> = encoded.iter().map(encoded_size).collect();
        let (mut failed, mut sender_fault, mut reason) = (0, false, None);
        // Every batch is tried; the failures are reported together.
        for range in batch_ranges(&sizes) {
            if let Some(failure) = self.send_batch(url, &encoded[range]).await? {
                failed += failure.count;
                sender_fault |= failure.sender_fault;
                reason.get_or_insert(failure.reason);
            }
        }
        if failed == 0 {
            return Ok(());
        }
        let message = format!(
            "SendMessageBatch: {failed} of {} messages failed (even when sent again): {}",
            messages.len(),
            reason.unwrap_or_default()
        );
        Err(if sender_fault { error::fault(SERVICE, message) } else { error::unavailable(SERVICE, message) })
    }

    async fn health(&self) -> PortResult<()> {
        let url = WorkerFamily::ALL
            .iter()
            .find_map(|f| self.queue_urls.get(f))
            .or_else(|| self.queue_urls.values().next())
            .ok_or_else(|| error::fault(SERVICE, "no queue configured"))?;
        self.client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| error::sdk(SERVICE, "GetQueueAttributes", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_core::exchange::Payload;
    use handoff_core::ids::{ExchangeId, IntegrationCode, IntegrationVersion, StepId};
    use handoff_core::plan::SubStep;

    fn message(input: Option<Payload>) -> HandoffMessage {
        HandoffMessage {
            exchange_id: ExchangeId::new("ex-1"),
            integration_code: IntegrationCode::parse("A").expect("code"),
            integration_version: IntegrationVersion::NULL,
            step_id: StepId::from_sequence(1),
            sub_step: SubStep::Transform,
            attempt: 1,
            input,
            parameters: serde_json::json!({}),
            not_before: None,
            recovery: 0,
            parent: None,
            requested_by: None,
            reexecution: false,
        }
    }

    #[test]
    fn encodes_body_and_attributes() {
        let (body, attributes) = encode(&message(Some(Payload::raw("x")))).expect("encode");
        let back: HandoffMessage = serde_json::from_str(&body).expect("json");
        assert_eq!(back, message(Some(Payload::raw("x"))));
        assert_eq!(attributes["exchangeId"].string_value(), Some("ex-1"));
        assert_eq!(attributes["subStep"].string_value(), Some("Transform"));
    }

    #[test]
    fn encodes_timers_as_queue_messages() {
        use chrono::TimeZone;
        use handoff_core::handoff::TimerKind;
        let due = chrono::Utc.timestamp_opt(1_767_225_600, 0).single().expect("time");
        let timers = [
            (TimerKind::StepTimeout { step_id: StepId::from_sequence(3) }, "stepTimeout"),
            (TimerKind::Sla, "sla"),
            (TimerKind::Handoff { message: Box::new(message(None)) }, "handoff"),
        ];
        for (kind, name) in timers {
            let timer = Timer { exchange_id: ExchangeId::new("ex-1"), recovery: 2, due, kind };
            let (body, attributes) = encode_timer(&timer).expect("encode");
            let json: serde_json::Value = serde_json::from_str(&body).expect("json");
            assert_eq!(json["timer"]["kind"], name, "{body}");
            assert_eq!(json.as_object().map(|o| o.len()), Some(1), "{body}");
            assert_eq!(
                serde_json::from_str::<QueueMessage>(&body).expect("queue message"),
                QueueMessage::Timer { timer: timer.clone() }
            );
            assert_eq!(attributes["exchangeId"].string_value(), Some("ex-1"));
            assert_eq!(attributes["kind"].string_value(), Some(name));
            assert_eq!(attributes.len(), 2);
        }
        // A handoff never reads as a timer.
        let (body, _) = encode(&message(None)).expect("encode");
        assert!(matches!(serde_json::from_str::<QueueMessage>(&body).expect("json"), QueueMessage::Handoff(_)));
    }

    #[test]
    fn batches_hold_ten_messages_and_256_kb() {
        assert!(batch_ranges(&[]).is_empty());
        assert_eq!(batch_ranges(&[100; 23]), vec![0..10, 10..20, 20..23]);
        assert_eq!(batch_ranges(&[100; 10]), vec![0..10]);
        let half = MAX_MESSAGE_BYTES / 2;
        assert_eq!(batch_ranges(&[half, half - 1, 1, 1]), vec![0..3, 3..4], "exactly 256 KB fit");
        assert_eq!(batch_ranges(&[half, half, 1, half]), vec![0..2, 2..4]);
        assert_eq!(batch_ranges(&[MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES, 1]), vec![0..1, 1..2, 2..3]);
        // The size counted is the one checked for a single message.
        let encoded = encode(&message(Some(Payload::raw("x")))).expect("encode");
        let attributes: usize = ["exchangeId", "subStep"].iter().map(|n| n.len() + "String".len()).sum::<usize>()
            + "ex-1".len()
            + "Transform".len();
        assert_eq!(encoded_size(&encoded), encoded.0.len() + attributes);
    }

    #[test]
    fn rejects_oversized_messages() {
        let big = message(Some(Payload::raw("x".repeat(MAX_MESSAGE_BYTES))));
        assert!(matches!(encode(&big), Err(handoff_ports::PortError::Fault { .. })));
    }
}
