//! The sub-step worker: one SQS-fed function per worker family. For each handoff message it
//! claims (side effects only), executes, and records the outcome as the state machine
//! ([`handoff_core::machine`]) decides — ONE conditional write, then its effects (the next
//! handoff, a retry, a timer). Duplicate, late and stale messages change nothing.
//! The control worker also fires durable timers (step timeouts, SLAs, long retries).

use crate::context::AppContext;
use crate::definitions::LoadedIntegration;
use crate::effects::run_effects;
use crate::entry::function::{FunctionHandler, InvocationError};
use crate::entry::sqs::{batch_response, SqsEvent};
use crate::executors::{execute, ExecutionContext};
use crate::payloads::PayloadCodec;
use async_trait::async_trait;
use chrono::{Duration as ChronoDuration, Utc};
use handoff_core::commit::{CommitOutcome, Conflict};
use handoff_core::exchange::LogLine;
use handoff_core::handoff::{HandoffMessage, QueueMessage, Timer, TimerKind};
use handoff_core::ids::StepId;
use handoff_core::machine::conflict::{self, AfterConflict};
use handoff_core::machine::timers::{self, TimerOutcome};
use handoff_core::machine::{attempt, delay_until, Decision};
use handoff_core::plan::WorkerFamily;
use handoff_ports::PortError;
use serde_json::Value;
use std::sync::Arc;
use tracing::Instrument;

/// Errors that leave the message on the queue for another try (infrastructure trouble).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("handoff message is not valid: {0}")]
    BadMessage(String),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("integration definition unavailable: {0}")]
    Definition(String),
    #[error("step {0} is being worked on by another attempt; try again later")]
    InFlightElsewhere(StepId),
}

pub struct WorkerFunction {
    ctx: Arc<AppContext>,
    family: WorkerFamily,
    codec: PayloadCodec,
}

impl WorkerFunction {
    pub fn new(ctx: Arc<AppContext>, family: WorkerFamily) -> Self {
        let codec = PayloadCodec::new(ctx.files.clone(), ctx.settings.inline_payload_limit);
        Self { ctx, family, codec }
    }

    pub async fn handle_body(&self, body: &str) -> Result<(), WorkerError> {
        let message: QueueMessage = serde_json::from_str(body).map_err(|e| WorkerError::BadMessage(e.to_string()))?;
        match message {
            QueueMessage::Timer { timer } => {
                let span = tracing::info_span!("timer", exchangeId = %timer.exchange_id, timer = %timer.name());
                logged(fire_timer(&self.ctx, timer)).instrument(span).await
            }
            QueueMessage::Handoff(message) => {
                let span = tracing::info_span!(
                    "sub_step",
                    exchangeId = %message.exchange_id,
                    stepId = %message.step_id,
                    subStep = %message.sub_step,
                    attempt = message.attempt,
                );
                logged(self.process(message)).instrument(span).await
            }
        }
    }

    async fn process(&self, message: HandoffMessage) -> Result<(), WorkerError> {
        let now = Utc::now();
        if let Some(due) = message.not_before.filter(|due| *due > now) {
            // Sent early (whole-second delays): wait out the rest.
            return Ok(self.ctx.queue.send(self.family, &message, delay_until(now, due)).await?);
        }
        let loaded = self
            .ctx
            .definitions
            .get(&message.integration_code, message.integration_version)
            .await
            .map_err(|e| WorkerError::Definition(e.to_string()))?
            .ok_or_else(|| {
                WorkerError::Definition(format!(
                    "integration {} version {} does not exist",
                    message.integration_code, message.integration_version
                ))
            })?;
        let pipeline = loaded.pipeline();
        let planned =
            pipeline.planned(message.step_id).filter(|p| p.sub_step == message.sub_step).ok_or_else(|| {
                WorkerError::BadMessage(format!("step {} is not a {} in the plan", message.step_id, message.sub_step))
            })?;
        if planned.sub_step.family() != self.family {
            return Err(WorkerError::BadMessage(format!(
                "{} arrived at the {} worker",
                planned.sub_step,
                self.family.name()
            )));
        }
        // The policy in force now: a lowered maximum ends a retrying step before it runs again.
        if let Some(decision) = attempt::beyond_policy(pipeline, planned, &message, now) {
            return self.apply(&message, &loaded, decision).await;
        }

        let claimed = planned.sub_step.has_external_effect();
        if claimed {
            let lease = ChronoDuration::from_std(self.ctx.settings.claim_lease).unwrap_or(ChronoDuration::seconds(60));
            let claim = self
                .ctx
                .exchanges
                .try_claim(&message.exchange_id, message.step_id, message.attempt, message.recovery, now, now + lease)
                .await?;
            if let Err(conflict) = claim {
                return self.after_conflict(&message, &loaded, conflict).await;
            }
        }
        tracing::info!("sub-step started");
        let execution = execute(&ExecutionContext {
            app: &self.ctx,
            http: &self.ctx.http,
            codec: &self.codec,
            loaded: &loaded,
            planned,
            message: &message,
        })
        .await;
        let now = Utc::now();
        let logs = execution
            .logs
            .into_iter()
            .map(|(kind, line)| LogLine { kind, line, timestamp: now, step_id: message.step_id })
            .collect();
        let attempt = attempt::Attempt {
            claimed,
            outcome: execution.outcome,
            logs,
            pass_on: execution.pass_on,
            recorded: execution.recorded,
        };
        let decision = attempt::attempt_finished(pipeline, planned, &message, attempt, random_unit(), now);
        self.apply(&message, &loaded, decision).await
    }

    async fn apply(
        &self,
        message: &HandoffMessage,
        loaded: &LoadedIntegration,
        decision: Decision,
    ) -> Result<(), WorkerError> {
        match self.ctx.exchanges.try_commit(&decision.commit).await? {
            Ok(()) => {
                tracing::info!(status = ?decision.commit.step.as_ref().map(|s| s.status), "sub-step recorded");
                Ok(run_effects(&self.ctx, decision.effects).await?)
            }
            Err(conflict) => self.after_conflict(message, loaded, conflict).await,
        }
    }

    /// Another delivery of this message (or a final or recovered exchange) got there first:
    /// a failed not-final check says the message is stale; otherwise the state machine
    /// decides from the exchange as it stands now.
    async fn after_conflict(
        &self,
        message: &HandoffMessage,
        loaded: &LoadedIntegration,
        conflict: Conflict,
    ) -> Result<(), WorkerError> {
        if conflict.is_stale() {
            tracing::info!("late or stale handoff dropped (the exchange is final or was recovered since)");
            return Ok(());
        }
        tracing::debug!(failed = ?conflict.failed, "conflict");
        let detail = self.ctx.exchanges.get(&message.exchange_id).await?;
        match conflict::after_conflict(loaded.pipeline(), message, detail.as_ref(), Utc::now()) {
            AfterConflict::Drop(reason) => {
                tracing::info!(reason, "message dropped");
                Ok(())
            }
            AfterConflict::Resend(effect, reason) => {
                tracing::info!(reason, "sent again");
                Ok(run_effects(&self.ctx, vec![effect]).await?)
            }
            AfterConflict::TryLater => Err(WorkerError::InFlightElsewhere(message.step_id)),
            AfterConflict::BadMessage(problem) => Err(WorkerError::BadMessage(problem)),
        }
    }
}

/// Fires a durable timer (control worker).
pub async fn fire_timer(ctx: &AppContext, timer: Timer) -> Result<(), WorkerError> {
    let now = Utc::now();
    let detail = match &timer.kind {
        TimerKind::Handoff { .. } => None,
        _ if timer.due > now => None,
        _ => ctx.exchanges.get(&timer.exchange_id).await?,
    };
    let loaded = match &detail {
        Some(detail) if timers::needs_pipeline(&timer, detail) => ctx
            .definitions
            .get(&detail.exchange.integration_code, detail.exchange.integration_version)
            .await
            .map_err(|e| WorkerError::Definition(e.to_string()))?,
        _ => None,
    };
    let pipeline = loaded.as_ref().map(|l| l.pipeline());
    match timers::timer_fired(pipeline, &timer, detail.as_ref(), now) {
        TimerOutcome::Nothing => Ok(()),
        TimerOutcome::Send(effect) => Ok(run_effects(ctx, vec![effect]).await?),
        TimerOutcome::Write(decision) => match ctx.exchanges.commit(&decision.commit).await? {
            CommitOutcome::Applied => {
                tracing::warn!(exchange = ?decision.commit.exchange, "timer fired");
                Ok(run_effects(ctx, decision.effects).await?)
            }
            CommitOutcome::Conflict => {
                tracing::info!("timer no longer relevant (the exchange or step moved on)");
                Ok(())
            }
        },
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

/// Jitter needs randomness; the core stays pure by taking it as an argument.
fn random_unit() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64;
    (bits >> 11) as f64 / (1u64 << 53) as f64
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
