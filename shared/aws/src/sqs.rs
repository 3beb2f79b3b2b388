//! [`HandoffQueue`] on SQS: one standard queue per worker family.
//!
//! The body is the JSON of [`HandoffMessage`]; the message attributes `exchangeId` and
//! `subStep` (strings) are for operators looking at a queue or a DLQ.

use crate::error;
use crate::ports::{HandoffMessage, HandoffQueue, PortResult};
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

    fn url(&self, family: WorkerFamily) -> PortResult<&str> {
        self.queue_urls
            .get(&family)
            .map(String::as_str)
            .ok_or_else(|| error::fault(SERVICE, format!("no queue configured for worker family '{}'", family.name())))
    }
}

/// The body and attributes of a message, checked against the SQS size limit.
pub(crate) fn encode(message: &HandoffMessage) -> PortResult<(String, HashMap<String, MessageAttributeValue>)> {
    let body =
        serde_json::to_string(message).map_err(|e| error::fault(SERVICE, format!("cannot encode message: {e}")))?;
    let exchange_id = message.exchange_id.to_string();
    let sub_step = message.sub_step.to_string();
    let size =
        body.len() + "exchangeId".len() + exchange_id.len() + "subStep".len() + sub_step.len() + 2 * "String".len();
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
    let attributes = HashMap::from([
        ("exchangeId".to_string(), attribute(exchange_id)?),
        ("subStep".to_string(), attribute(sub_step)?),
    ]);
    Ok((body, attributes))
}

#[async_trait]
impl HandoffQueue for SqsHandoffQueue {
    async fn send(&self, family: WorkerFamily, message: &HandoffMessage, delay_seconds: u32) -> PortResult<()> {
        let url = self.url(family)?;
        let (body, attributes) = encode(message)?;
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
    fn rejects_oversized_messages() {
        let big = message(Some(Payload::raw("x".repeat(MAX_MESSAGE_BYTES))));
        assert!(matches!(encode(&big), Err(crate::ports::PortError::Fault { .. })));
    }
}
