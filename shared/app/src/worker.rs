//! The sub-step worker: one SQS-fed function per worker family. For each handoff message it
//! claims (side effects only), executes, commits the outcome with ONE conditional write,
//! then hands off to the next sub-step. Duplicate and late messages change nothing.

use crate::context::AppContext;
use crate::definitions::LoadedIntegration;
use crate::executors::{execute, ExecutionContext, StepOutput};
use crate::function::{FunctionHandler, InvocationError};
use crate::invoke::retry_policy;
use crate::payloads::PayloadCodec;
use crate::ports::{ClaimOutcome, CommitOutcome, ExchangeChange, HandoffMessage, PortError, StepChange, StepCommit};
use crate::sqs::{batch_response, SqsEvent};
use async_trait::async_trait;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use handoff_core::exchange::{
    decide_after_attempt, AttemptOutcome, ExchangeError, ExchangeStatus, LogLine, LogType, StepDecision, StepError, StepStatus,
};
use handoff_core::ids::StepId;
use handoff_core::plan::{PlannedSubStep, SubStep, WorkerFamily};
use handoff_core::retry::Failure;
use serde_json::Value;
use std::sync::Arc;
use tracing::Instrument;

/// SQS cannot delay a message longer than this.
const MAX_SQS_DELAY_SECONDS: i64 = 900;

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
        let message: HandoffMessage = serde_json::from_str(body).map_err(|e| WorkerError::BadMessage(e.to_string()))?;
        let span = tracing::info_span!(
            "sub_step",
            exchangeId = %message.exchange_id,
            stepId = %message.step_id,
            subStep = %message.sub_step,
            attempt = message.attempt,
        );
        self.process(message).instrument(span).await
    }

    async fn process(&self, message: HandoffMessage) -> Result<(), WorkerError> {
        let now = Utc::now();
        if let Some(due) = message.not_before.filter(|due| *due > now) {
            // Longer than SQS can delay: hop again until due.
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
        let planned = loaded
            .plan
            .get(message.step_id.sequence() as usize)
            .filter(|p| p.sub_step == message.sub_step)
            .ok_or_else(|| WorkerError::BadMessage(format!("step {} is not a {} in the plan", message.step_id, message.sub_step)))?;
        if planned.sub_step.family() != Some(self.family) {
            return Err(WorkerError::BadMessage(format!(
                "{} arrived at the {} worker",
                planned.sub_step,
                self.family.name()
            )));
        }

        let claimed = planned.sub_step.has_external_effect();
        if claimed {
            let lease_until = now + ChronoDuration::from_std(self.ctx.settings.claim_lease).unwrap_or(ChronoDuration::seconds(60));
            if self.ctx.exchanges.claim(&message.exchange_id, message.step_id, message.attempt, now, lease_until).await?
                == ClaimOutcome::NotClaimable
            {
                return self.after_conflict(&message, &loaded).await;
            }
        }
        tracing::info!("sub-step started");
        let execution = execute(&ExecutionContext {
            http: &self.ctx.http,
            codec: &self.codec,
            loaded: &loaded,
            planned,
            message: &message,
        })
        .await;
        let policy = retry_policy(&loaded.definition, planned);
        let outcome = match &execution.outcome {
            Ok(_) => AttemptOutcome::Succeeded,
            Err(failure) => AttemptOutcome::Failed(failure.clone()),
        };
        let decision = decide_after_attempt(StepStatus::Initial, message.attempt, &policy, outcome, random_unit());
        let now = Utc::now();
        let logs = execution
            .logs
            .into_iter()
            .map(|line| LogLine { kind: LogType::System, line, timestamp: now, step_id: message.step_id })
            .collect();
        let step = StepChange {
            step_id: message.step_id,
            attempt: message.attempt,
            claimed,
            status: StepStatus::Initial,
            payload: None,
            max_attempts: policy.max_attempts,
            last_error: None,
            next_retry_at: None,
            completed_at: None,
            logs,
        };
        let plan = Plan { loaded: &loaded, planned };
        let (commit, follow_up) = plan.commit_for(&message, step, decision, execution.outcome, now);
        match self.ctx.exchanges.commit(&commit).await? {
            CommitOutcome::Applied => {
                tracing::info!(status = ?commit.step.status, "sub-step recorded");
                if let Some((family, next, delay)) = follow_up {
                    self.ctx.queue.send(family, &next, delay).await?;
                }
                Ok(())
            }
            CommitOutcome::Conflict => self.after_conflict(&message, &loaded).await,
        }
    }

    /// Another delivery of this message (or a final exchange) got there first. Re-send the
    /// next handoff only if it evidently never happened (a crash between commit and send);
    /// otherwise drop the message.
    async fn after_conflict(&self, message: &HandoffMessage, loaded: &LoadedIntegration) -> Result<(), WorkerError> {
        let Some(detail) = self.ctx.exchanges.get(&message.exchange_id).await? else {
            tracing::warn!("duplicate handoff for an exchange that does not exist; dropped");
            return Ok(());
        };
        if detail.exchange.status.is_final() {
            tracing::info!(status = ?detail.exchange.status, "exchange is final; late handoff dropped");
            return Ok(());
        }
        let Some(step) = detail.steps.iter().find(|s| s.step_id == message.step_id) else {
            return Err(WorkerError::BadMessage(format!("exchange has no step {}", message.step_id)));
        };
        match step.status {
            StepStatus::Initial if step.attempts > message.attempt || step.next_retry_at.is_some() => {
                tracing::info!("stale attempt; dropped");
                Ok(())
            }
            StepStatus::Initial => Err(WorkerError::InFlightElsewhere(message.step_id)),
            StepStatus::Failed | StepStatus::Skipped => {
                tracing::info!(status = ?step.status, "step already final; duplicate dropped");
                Ok(())
            }
            StepStatus::Done => {
                let next = detail
                    .steps
                    .iter()
                    .find(|s| s.sequence > step.sequence && s.status != StepStatus::Skipped);
                match next {
                    Some(next) if next.status == StepStatus::Initial && next.attempts == 0 => {
                        let planned = &loaded.plan[next.sequence as usize];
                        let input = step.payload.clone().or_else(|| message.input.clone());
                        let handoff = next_message(message, planned, input);
                        tracing::warn!(next = %planned.sub_step, "step was done but its handoff is missing; re-sent");
                        let family = planned.sub_step.family().unwrap_or(WorkerFamily::Control);
                        Ok(self.ctx.queue.send(family, &handoff, 0).await?)
                    }
                    _ => {
                        tracing::info!("duplicate handoff dropped; the step is done");
                        Ok(())
                    }
                }
            }
        }
    }
}

struct Plan<'a> {
    loaded: &'a LoadedIntegration,
    planned: &'a PlannedSubStep,
}

type FollowUp = Option<(WorkerFamily, HandoffMessage, u32)>;

impl Plan<'_> {
    /// Turns a decision into the one conditional write and the handoff that follows it.
    fn commit_for(
        &self,
        message: &HandoffMessage,
        mut step: StepChange,
        decision: StepDecision,
        outcome: Result<StepOutput, Failure>,
        now: DateTime<Utc>,
    ) -> (StepCommit, FollowUp) {
        let not_final = vec![
            ExchangeStatus::New,
            ExchangeStatus::Started,
            ExchangeStatus::WaitingOnExternalSystem,
            ExchangeStatus::WaitingForSubExchangesToFinish,
        ];
        let mut skip = Vec::new();
        let (exchange, follow_up) = match decision {
            StepDecision::MarkDone | StepDecision::Ignore => {
                let output = outcome.unwrap_or_default();
                step.status = StepStatus::Done;
                step.completed_at = Some(now);
                step.payload = output.payload.clone();
                let next_sequence = output.skip_to.unwrap_or(self.planned.sequence + 1);
                skip = (self.planned.sequence + 1..next_sequence).map(StepId::from_sequence).collect();
                let exchange = match self.planned.sub_step {
                    SubStep::ExchangeTriggered => ExchangeChange::SetStatus {
                        from: vec![ExchangeStatus::New, ExchangeStatus::Started],
                        to: ExchangeStatus::Started,
                        error: None,
                        completed_at: None,
                    },
                    SubStep::ExchangeSignoff => ExchangeChange::SetStatus {
                        from: not_final,
                        to: ExchangeStatus::Completed,
                        error: None,
                        completed_at: Some(now),
                    },
                    _ => ExchangeChange::RequireNotFinal,
                };
                let input = output.payload.or_else(|| message.input.clone());
                let follow_up = self.loaded.plan.get(next_sequence as usize).map(|next| {
                    (next.sub_step.family().unwrap_or(WorkerFamily::Control), next_message(message, next, input), 0)
                });
                (exchange, follow_up)
            }
            StepDecision::ScheduleRetry { next_attempt, delay_seconds } => {
                let due = now + ChronoDuration::seconds(delay_seconds as i64);
                step.next_retry_at = Some(due);
                step.last_error = outcome.err().map(|f| step_error(&f, now));
                let retry = HandoffMessage { attempt: next_attempt, not_before: Some(due), ..message.clone() };
                let family = self.planned.sub_step.family().unwrap_or(WorkerFamily::Control);
                (ExchangeChange::RequireNotFinal, Some((family, retry, delay_until(now, due))))
            }
            StepDecision::MarkFailed(failure) => {
                step.status = StepStatus::Failed;
                step.last_error = Some(step_error(&failure, now));
                if self.is_secondary_destination() {
                    // A secondary destination's failure is recorded on its step; the exchange goes on.
                    let next_sequence = self.planned.sequence + 1;
                    let follow_up = self.loaded.plan.get(next_sequence as usize).map(|next| {
                        let family = next.sub_step.family().unwrap_or(WorkerFamily::Control);
                        (family, next_message(message, next, message.input.clone()), 0)
                    });
                    (ExchangeChange::RequireNotFinal, follow_up)
                } else {
                    let error = ExchangeError {
                        classification: failure.classification,
                        message: failure.message,
                        step_id: Some(message.step_id),
                        sub_step: Some(message.sub_step),
                        at: now,
                    };
                    (
                        ExchangeChange::SetStatus { from: not_final, to: ExchangeStatus::Failed, error: Some(error), completed_at: None },
                        None,
                    )
                }
            }
        };
        (StepCommit { exchange_id: message.exchange_id.clone(), step, skip, exchange, now }, follow_up)
    }

    fn is_secondary_destination(&self) -> bool {
        use handoff_core::definition::StepAction;
        match (self.planned.step_index, self.planned.destination) {
            (Some(i), Some(d)) => matches!(
                &self.loaded.definition.steps[i].action,
                StepAction::Delivery { destinations } if destinations.get(d).is_some_and(|dest| !dest.main)
            ),
            _ => false,
        }
    }
}

fn step_error(failure: &Failure, at: DateTime<Utc>) -> StepError {
    StepError { classification: failure.classification, message: failure.message.clone(), at }
}

fn next_message(current: &HandoffMessage, next: &PlannedSubStep, input: Option<handoff_core::exchange::Payload>) -> HandoffMessage {
    HandoffMessage {
        step_id: StepId::from_sequence(next.sequence),
        sub_step: next.sub_step,
        attempt: 1,
        input,
        not_before: None,
        ..current.clone()
    }
}

fn delay_until(now: DateTime<Utc>, due: DateTime<Utc>) -> u32 {
    (due - now).num_seconds().clamp(0, MAX_SQS_DELAY_SECONDS) as u32
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
                tracing::error!(messageId = %record.message_id, error = %e, "handoff message not processed; it will be retried");
            }
            (record.message_id.clone(), result.is_ok())
        }))
        .await;
        Ok(batch_response(results))
    }
}
