//! The dead-letter handler: a handoff message that kept failing ends here. Its exchange is
//! marked Failed (system error, cause recorded), so nothing is lost silently and the
//! exchange can be recovered.

use crate::context::AppContext;
use crate::function::{FunctionHandler, InvocationError};
use crate::sqs::{batch_response, SqsEvent, SqsRecord};
use async_trait::async_trait;
use chrono::Utc;
use handoff_core::commit::{CommitOutcome, ErrorRecord, ExchangeChange, ParentTally, StepChange, StepCommit};
use handoff_core::exchange::{ExchangeError, ExchangeStatus, StepError, StepStatus};
use handoff_core::handoff::HandoffMessage;
use handoff_core::retry::ErrorClassification;
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
        let now = Utc::now();
        let queue = record.event_source_arn.as_deref().and_then(|a| a.rsplit(':').next()).unwrap_or("a queue");
        let cause = format!(
            "handoff of sub-step {} (attempt {}) was dead-lettered in {queue} after {} receives",
            message.sub_step,
            message.attempt,
            record.attributes.get("ApproximateReceiveCount").map(String::as_str).unwrap_or("repeated")
        );
        let error = ExchangeError {
            classification: ErrorClassification::System,
            message: cause.clone(),
            retryable: true,
            step_id: Some(message.step_id),
            sub_step: Some(message.sub_step),
            at: now,
        };
        let mut commit = StepCommit::new(
            message.exchange_id.clone(),
            message.recovery,
            ExchangeChange::SetStatus {
                from: vec![
                    ExchangeStatus::New,
                    ExchangeStatus::Started,
                    ExchangeStatus::WaitingOnExternalSystem,
                    ExchangeStatus::WaitingForSubExchangesToFinish,
                ],
                to: ExchangeStatus::Failed,
                error: Some(error),
                completed_at: None,
            },
            now,
        );
        commit.errors.push(ErrorRecord {
            exchange_id: message.exchange_id.clone(),
            integration_code: message.integration_code.clone(),
            step_id: Some(message.step_id),
            sub_step: Some(message.sub_step),
            classification: ErrorClassification::System,
            message: cause.clone(),
            retryable: true,
            exchange_failed: true,
            at: now,
        });
        commit.step = Some(StepChange {
            step_id: message.step_id,
            attempt: message.attempt,
            claimed: false,
            status: StepStatus::Failed,
            payload: None,
            max_attempts: message.attempt,
            last_error: Some(StepError {
                classification: ErrorClassification::System,
                message: cause.clone(),
                at: now,
            }),
            next_retry_at: None,
            completed_at: None,
            logs: Vec::new(),
        });
        commit.tally = message.parent.as_ref().map(|p| ParentTally {
            parent: p.exchange_id.clone(),
            step_id: p.step_id,
            completed: false,
        });
        match self.ctx.exchanges.commit(&commit).await? {
            CommitOutcome::Applied => {
                tracing::error!(exchangeId = %message.exchange_id, stepId = %message.step_id, %cause, "exchange failed: dead-lettered handoff");
                if let Some(link) = &message.parent {
                    crate::subflow::resume_parent_if_last(&self.ctx, link).await?;
                }
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
