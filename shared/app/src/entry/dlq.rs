//! The dead-letter handler: a handoff message that kept failing ends here. Its exchange is
//! marked Failed (system error, cause recorded), so nothing is lost silently and the
//! exchange can be recovered.

use crate::context::AppContext;
use crate::effects::run_effects;
use crate::entry::function::{FunctionHandler, InvocationError};
use crate::entry::sqs::{batch_response, SqsEvent, SqsRecord};
use async_trait::async_trait;
use chrono::Utc;
use handoff_core::commit::CommitOutcome;
use handoff_core::handoff::HandoffMessage;
use handoff_core::machine::failures;
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
        let Ok(message) = serde_json::from_str::<HandoffMessage>(&record.body) else {
            // Not ours to interpret: keep it in the DLQ for an operator (it is retried, never deleted).
            tracing::error!(messageId = %record.message_id, source = ?record.event_source_arn, "dead letter is not a handoff message; left in the DLQ");
            return Err(PortError::Fault { service: "dlq", message: "unreadable dead letter".into() });
        };
        let queue = record.event_source_arn.as_deref().and_then(|a| a.rsplit(':').next()).unwrap_or("a queue");
        let receives = record.attributes.get("ApproximateReceiveCount").map(String::as_str).unwrap_or("repeated");
        let decision = failures::dead_lettered(&message, queue, receives, Utc::now());
        match self.ctx.exchanges.commit(&decision.commit).await? {
            CommitOutcome::Applied => {
                tracing::error!(exchangeId = %message.exchange_id, stepId = %message.step_id, queue, "exchange failed: dead-lettered handoff");
                run_effects(&self.ctx, decision.effects).await?;
            }
            CommitOutcome::Conflict => {
                tracing::warn!(exchangeId = %message.exchange_id, stepId = %message.step_id, "dead letter for a step or exchange that already moved on; nothing to mark")
            }
        }
        Ok(())
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
