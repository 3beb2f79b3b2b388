//! The dead-letter handler: decodes each dead letter (a handoff or a timer) and hands it to
//! [`crate::use_cases::dead_letter`]; one it cannot read stays in the DLQ for an operator.

use crate::context::AppContext;
use crate::entry::function::{FunctionHandler, InvocationError};
use crate::entry::sqs::{batch_response, SqsEvent, SqsRecord};
use crate::use_cases::dead_letter::{dead_lettered, timer_dead_lettered, DeadLetters};
use async_trait::async_trait;
use handoff_core::handoff::QueueMessage;
use handoff_ports::PortError;
use serde_json::Value;
use std::sync::Arc;

pub struct DlqFunction {
    ctx: Arc<AppContext>,
}

impl DlqFunction {
    pub fn new(ctx: Arc<AppContext>) -> Self {
        Self { ctx }
    }

    async fn handle(&self, record: &SqsRecord) -> Result<(), PortError> {
        let Ok(message) = serde_json::from_str::<QueueMessage>(&record.body) else {
            // Not ours to interpret: keep it in the DLQ for an operator (it is retried, never deleted).
            tracing::error!(messageId = %record.message_id, source = ?record.event_source_arn, "dead letter is not a handoff or timer message; left in the DLQ");
            return Err(PortError::Fault { service: "dlq", message: "unreadable dead letter".into() });
        };
        let queue = record.event_source_arn.as_deref().and_then(|a| a.rsplit(':').next()).unwrap_or("a queue");
        match message {
            QueueMessage::Handoff(message) => {
                let receives =
                    record.attributes.get("ApproximateReceiveCount").map(String::as_str).unwrap_or("repeated");
                dead_lettered(&DeadLetters::of(&self.ctx), &message, queue, receives).await
            }
            QueueMessage::Timer { timer } => timer_dead_lettered(&DeadLetters::of(&self.ctx), &timer, queue).await,
        }
    }
}

#[async_trait]
impl FunctionHandler for DlqFunction {
    async fn invoke(&self, event: Value) -> Result<Value, InvocationError> {
        let event = SqsEvent::parse(event)?;
        let mut results = Vec::with_capacity(event.records.len());
        for record in &event.records {
            let result = self.handle(record).await;
            if let Err(e) = &result {
                tracing::error!(messageId = %record.message_id, error = %e, "dead letter not processed");
            }
            results.push((record.message_id.clone(), result.is_ok()));
        }
        Ok(batch_response(results))
    }
}
