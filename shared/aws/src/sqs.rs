//! [`HandoffQueue`] on SQS: one standard queue per worker family.
//!
//! The body is the JSON of [`QueueMessage`]: a [`HandoffMessage`] with the message
//! attributes `exchangeId` and `subStep`, or `{"timer": <Timer>}` on the control queue with
//! the attributes `exchangeId` and `kind` (the timer's kind, e.g. `stepTimeout`). The
//! attributes (strings) are for operators looking at a queue or a DLQ.

use crate::error;
use crate::ports::{HandoffMessage, HandoffQueue, PortResult, QueueMessage, Timer};
use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
use aws_sdk_sqs::Client;
use handoff_core::plan::WorkerFamily;
use std::collections::HashMap;

const SERVICE: &str = "sqs";
/// SQS's largest message (body plus attributes).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// SQS's longest delivery delay.
pub const MAX_DELAY_SECONDS: u32 = 900;

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

    fn url(&self, family: WorkerFamily) -> PortResult<&str> {
        self.queue_urls
            .get(&family)
            .map(String::as_str)
            .ok_or_else(|| error::fault(SERVICE, format!("no queue configured for worker family '{}'", family.name())))
    }
}

type Encoded = (String, HashMap<String, MessageAttributeValue>);

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
    let size =
        body.len() + attributes.iter().map(|(name, value)| name.len() + value.len() + "String".len()).sum::<usize>();
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
        use crate::ports::TimerKind;
        use chrono::TimeZone;
        let due = chrono::Utc.timestamp_opt(1_767_225_600, 0).single().expect("time");
        let timers = [
            (TimerKind::StepTimeout { step_id: StepId::from_sequence(3) }, "stepTimeout"),
            (TimerKind::Sla, "sla"),
            (TimerKind::Retry { message: Box::new(message(None)) }, "retry"),
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
    fn rejects_oversized_messages() {
        let big = message(Some(Payload::raw("x".repeat(MAX_MESSAGE_BYTES))));
        assert!(matches!(encode(&big), Err(crate::ports::PortError::Fault { .. })));
    }
}
