//! The sub-step worker: one SQS-fed function per worker family. Each record is a handoff
//! message ([`crate::use_cases::handoff`]) or, at the control worker, a durable timer
//! ([`crate::use_cases::timer`]); a record that fails stays on its queue for a retry.

use crate::context::AppContext;
use crate::entry::function::{FunctionHandler, InvocationError};
use crate::entry::sqs::{batch_response, SqsEvent};
use crate::executors::Execute;
use crate::use_cases::handoff::handle_handoff;
pub use crate::use_cases::handoff::WorkerError;
use crate::use_cases::timer::{fire_timer, Timers};
use async_trait::async_trait;
use handoff_core::handoff::QueueMessage;
use handoff_core::plan::WorkerFamily;
use serde_json::Value;
use std::sync::Arc;
use tracing::Instrument;

pub struct WorkerFunction {
    ctx: Arc<AppContext>,
    family: WorkerFamily,
    execute: Execute,
}

impl WorkerFunction {
    /// The worker of `family`, running sub-steps with `execute` (see [`Execute`]).
    pub fn new(ctx: Arc<AppContext>, family: WorkerFamily, execute: Execute) -> Self {
        Self { ctx, family, execute }
    }

    pub async fn handle_body(&self, body: &str) -> Result<(), WorkerError> {
        let message: QueueMessage = serde_json::from_str(body).map_err(|e| WorkerError::BadMessage(e.to_string()))?;
        match message {
            QueueMessage::Timer { timer } => {
                let span = tracing::info_span!("timer", exchangeId = %timer.exchange_id, timer = %timer.name());
                logged(fire_timer(&Timers::of(&self.ctx), timer)).instrument(span).await
            }
            QueueMessage::Handoff(message) => {
                let span = tracing::info_span!(
                    "sub_step",
                    exchangeId = %message.exchange_id,
                    stepId = %message.step_id,
                    subStep = %message.sub_step,
                    attempt = message.attempt,
                );
                logged(handle_handoff(&self.ctx, self.family, self.execute, message)).instrument(span).await
            }
        }
    }
}

/// Logs a failure within the span that names the exchange (the batch only knows message ids).
async fn logged(work: impl std::future::Future<Output = Result<(), WorkerError>>) -> Result<(), WorkerError> {
    let result = work.await;
    match &result {
        // Expected with duplicates: the copy in flight decides, this one comes back later.
        Err(e @ WorkerError::InFlightElsewhere(_)) => {
            tracing::info!(error = %e, "message not processed yet; it will be retried")
        }
        Err(e) => tracing::error!(error = %e, "message not processed; it will be retried"),
        Ok(()) => {}
    }
    result
}

#[async_trait]
impl FunctionHandler for WorkerFunction {
    async fn invoke(&self, event: Value) -> Result<Value, InvocationError> {
        let event = SqsEvent::parse(event)?;
        let results = futures::future::join_all(event.records.iter().map(|record| async move {
            let result = self.handle_body(&record.body).await;
            if let Err(e) = &result {
                tracing::warn!(messageId = %record.message_id, error = %e, "message left on its queue for a retry");
            }
            (record.message_id.clone(), result.is_ok())
        }))
        .await;
        Ok(batch_response(results))
    }
}
