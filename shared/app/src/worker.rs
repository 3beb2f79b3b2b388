//! The sub-step worker: one SQS-fed function per worker family. For each handoff message it
//! claims (side effects only), executes, commits the outcome with ONE conditional write,
//! then hands off to the next sub-step. Duplicate, late and stale messages change nothing.
//! The control worker also fires durable timers (step timeouts, SLAs, long retries).

use crate::context::AppContext;
use crate::definitions::LoadedIntegration;
use crate::executors::{execute, ExecutionContext, StepOutput, Wait};
use crate::function::{FunctionHandler, InvocationError};
use crate::invoke::retry_policy;
use crate::payloads::PayloadCodec;
use crate::sqs::{batch_response, SqsEvent};
use crate::subflow::{resume_parent_if_last, time_out_children};
use async_trait::async_trait;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use handoff_core::commit::{
    ClaimOutcome, CommitOutcome, ErrorRecord, ExchangeChange, ParentTally, StepChange, StepCommit,
};
use handoff_core::exchange::{
    decide_after_attempt, AttemptOutcome, ExchangeError, ExchangeStatus, ExchangeStep, LogLine, ParentLink,
    StepDecision, StepError, StepStatus,
};
use handoff_core::handoff::{HandoffMessage, QueueMessage, Timer, TimerKind};
use handoff_core::ids::StepId;
use handoff_core::plan::{PlannedSubStep, SubStep, WorkerFamily};
use handoff_core::retry::{ErrorClassification, Failure};
use handoff_ports::PortError;
use serde_json::Value;
use std::sync::Arc;
use tracing::Instrument;

/// SQS cannot delay a message longer than this; later timers are stored and swept.
pub const MAX_SQS_DELAY_SECONDS: i64 = 900;

const NOT_FINAL: [ExchangeStatus; 4] = [
    ExchangeStatus::New,
    ExchangeStatus::Started,
    ExchangeStatus::WaitingOnExternalSystem,
    ExchangeStatus::WaitingForSubExchangesToFinish,
];

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

/// What follows a successful commit: handoffs and timers to send.
#[derive(Debug)]
pub enum FollowUp {
    Handoff { family: WorkerFamily, message: HandoffMessage, delay: u32 },
    Timer { timer: Timer, delay: u32 },
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
        let planned = loaded
            .plan
            .get(message.step_id.sequence() as usize)
            .filter(|p| p.sub_step == message.sub_step)
            .ok_or_else(|| {
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
        let policy = retry_policy(&loaded.definition, planned);
        let plan = Plan { loaded: &loaded, planned };
        if message.attempt > policy.max_attempts {
            let failure = Failure::system(format!(
                "retries exhausted: attempt {} is beyond maxAttempts {} now in force",
                message.attempt, policy.max_attempts
            ));
            let step = plan.step_change(&message, false, policy.max_attempts, Vec::new());
            let (commit, follow_ups) =
                plan.commit_for(&message, step, StepDecision::MarkFailed(failure.clone()), Err(failure), now);
            return self.apply(&message, &loaded, commit, follow_ups).await;
        }

        let claimed = planned.sub_step.has_external_effect();
        if claimed {
            let lease_until =
                now + ChronoDuration::from_std(self.ctx.settings.claim_lease).unwrap_or(ChronoDuration::seconds(60));
            let outcome = self
                .ctx
                .exchanges
                .claim(&message.exchange_id, message.step_id, message.attempt, message.recovery, now, lease_until)
                .await?;
            if outcome == ClaimOutcome::NotClaimable {
                return self.after_conflict(&message, &loaded).await;
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
        let outcome = match &execution.outcome {
            Ok(_) => AttemptOutcome::Succeeded,
            Err(failure) => AttemptOutcome::Failed(failure.clone()),
        };
        let decision = decide_after_attempt(StepStatus::Initial, message.attempt, &policy, outcome, random_unit());
        let now = Utc::now();
        let logs = execution
            .logs
            .into_iter()
            .map(|(kind, line)| LogLine { kind, line, timestamp: now, step_id: message.step_id })
            .collect();
        // A decided attempt (not one to be retried) hands on what the executor says flows
        // past it, and lists its side errors; a retry runs on the same input again.
        let decided = !matches!(decision, StepDecision::ScheduleRetry { .. });
        let message = match execution.pass_on {
            Some(payload) if decided => HandoffMessage { input: Some(payload), ..message },
            _ => message,
        };
        let recorded = if decided { execution.recorded } else { Vec::new() };
        let step = plan.step_change(&message, claimed, policy.max_attempts, logs);
        let (mut commit, follow_ups) = plan.commit_for(&message, step, decision, execution.outcome, now);
        commit.errors.extend(recorded.into_iter().map(|failure| ErrorRecord {
            exchange_id: message.exchange_id.clone(),
            integration_code: message.integration_code.clone(),
            step_id: Some(message.step_id),
            sub_step: Some(message.sub_step),
            classification: failure.classification,
            message: failure.message,
            retryable: failure.retryable,
            exchange_failed: false,
            at: now,
        }));
        self.apply(&message, &loaded, commit, follow_ups).await
    }

    async fn apply(
        &self,
        message: &HandoffMessage,
        loaded: &LoadedIntegration,
        commit: StepCommit,
        follow_ups: Vec<FollowUp>,
    ) -> Result<(), WorkerError> {
        match self.ctx.exchanges.commit(&commit).await? {
            CommitOutcome::Applied => {
                tracing::info!(status = ?commit.step.as_ref().map(|s| s.status), "sub-step recorded");
                send_follow_ups(&self.ctx, follow_ups).await?;
                after_final(&self.ctx, message.parent.as_ref(), &commit).await
            }
            CommitOutcome::Conflict => self.after_conflict(message, loaded).await,
        }
    }

    /// Another delivery of this message (or a final or recovered exchange) got there first.
    /// Send again what a crash between that commit and its sends could have lost — the next
    /// handoff (when it evidently never happened), the retry, the wait's timeout — and
    /// otherwise drop the message. Duplicates of those are absorbed downstream.
    async fn after_conflict(&self, message: &HandoffMessage, loaded: &LoadedIntegration) -> Result<(), WorkerError> {
        let Some(detail) = self.ctx.exchanges.get(&message.exchange_id).await? else {
            tracing::warn!("handoff for an exchange that does not exist; dropped");
            return Ok(());
        };
        if detail.exchange.status.is_final() || detail.exchange.recoveries != message.recovery {
            tracing::info!(status = ?detail.exchange.status, recoveries = detail.exchange.recoveries, "late or stale handoff dropped");
            return Ok(());
        }
        let Some(step) = detail.steps.iter().find(|s| s.step_id == message.step_id) else {
            return Err(WorkerError::BadMessage(format!("exchange has no step {}", message.step_id)));
        };
        let previous_done = message.step_id.sequence() == 0
            || detail
                .steps
                .get(message.step_id.sequence() as usize - 1)
                .is_some_and(|s| s.status != StepStatus::Initial);
        match step.status {
            StepStatus::Initial if step.attempts > message.attempt => {
                tracing::info!("stale attempt; dropped");
                Ok(())
            }
            // This attempt failed and scheduled the next; a crash (or a timed-out batch) between
            // that commit and the send would lose the retry, so send it again: its claim lets only
            // one copy run. A retry too far ahead for a delayed message was stored with the commit.
            StepStatus::Initial if step.next_retry_at.is_some() && step.attempts == message.attempt => {
                let Some(due) = step.next_retry_at else { return Ok(()) };
                let now = Utc::now();
                if (due - now).num_seconds() > MAX_SQS_DELAY_SECONDS {
                    tracing::info!("duplicate of a failed attempt; its retry is a stored timer");
                    return Ok(());
                }
                tracing::info!(retryAt = %due, "duplicate of a failed attempt; its retry is sent again in case it was lost");
                let retry = HandoffMessage { attempt: message.attempt + 1, not_before: Some(due), ..message.clone() };
                Ok(self.ctx.queue.send(self.family, &retry, delay_until(now, due)).await?)
            }
            StepStatus::Initial if step.next_retry_at.is_some() => {
                tracing::info!("stale attempt; dropped");
                Ok(())
            }
            // A callback that overtook the call that armed it: try again once that call is recorded.
            StepStatus::Initial if !previous_done => Err(WorkerError::InFlightElsewhere(message.step_id)),
            StepStatus::Initial if step.attempts == message.attempt || step.attempts == 0 => {
                Err(WorkerError::InFlightElsewhere(message.step_id))
            }
            StepStatus::Initial => {
                tracing::info!("stale attempt; dropped");
                Ok(())
            }
            StepStatus::Failed | StepStatus::Skipped => {
                tracing::info!(status = ?step.status, "step already final; duplicate dropped");
                Ok(())
            }
            StepStatus::Done => {
                let next = detail.steps.iter().find(|s| s.sequence > step.sequence && s.status != StepStatus::Skipped);
                let waiting = detail.exchange.status == ExchangeStatus::WaitingOnExternalSystem;
                match next {
                    Some(next) if next.status == StepStatus::Initial && next.attempts == 0 && !waiting => {
                        let planned = &loaded.plan[next.sequence as usize];
                        let input = step.payload.clone().or_else(|| message.input.clone());
                        tracing::warn!(next = %planned.sub_step, "step was done but its handoff is missing; re-sent");
                        let family = planned.sub_step.family();
                        Ok(self.ctx.queue.send(family, &next_message(message, planned, input), 0).await?)
                    }
                    Some(next)
                        if waiting
                            && next.status == StepStatus::Initial
                            && takes_callback_after(loaded, step, next) =>
                    {
                        self.rearm_callback_timeout(message, loaded, step, next).await
                    }
                    _ => {
                        tracing::info!("duplicate handoff dropped; the step is done");
                        Ok(())
                    }
                }
            }
        }
    }

    /// A wait's timeout timer travels as a delayed message sent after the commit, so it can be
    /// lost like a handoff: arm it again (a duplicate finds the step moved on and does nothing).
    async fn rearm_callback_timeout(
        &self,
        message: &HandoffMessage,
        loaded: &LoadedIntegration,
        done: &ExchangeStep,
        waiting: &ExchangeStep,
    ) -> Result<(), WorkerError> {
        let planned = &loaded.plan[done.sequence as usize];
        let timeout = loaded.definition.callback_timeout_seconds(planned.step_index, planned.destination);
        let (Some(seconds), Some(completed_at)) = (timeout, done.completed_at) else {
            tracing::info!("duplicate handoff dropped; the step is done and its wait has no deadline");
            return Ok(());
        };
        let due = completed_at + ChronoDuration::seconds(seconds as i64);
        let now = Utc::now();
        if (due - now).num_seconds() > MAX_SQS_DELAY_SECONDS {
            tracing::info!("duplicate handoff dropped; the wait's timeout is a stored timer");
            return Ok(());
        }
        tracing::info!(timeoutAt = %due, "duplicate handoff; the wait's timeout is armed again in case it was lost");
        let timer = Timer {
            exchange_id: message.exchange_id.clone(),
            recovery: message.recovery,
            due,
            kind: TimerKind::StepTimeout { step_id: waiting.step_id },
        };
        Ok(self.ctx.queue.send_timer(&timer, delay_until(now, due)).await?)
    }
}

/// Whether `next` is the sub-step taking the callback that `done` waits for.
fn takes_callback_after(loaded: &LoadedIntegration, done: &ExchangeStep, next: &ExchangeStep) -> bool {
    next.sequence == done.sequence + 1
        && loaded
            .plan
            .get(next.sequence as usize)
            .is_some_and(|p| matches!(p.sub_step, SubStep::ReceiveNotification | SubStep::ReceiveAgentNotification))
}

pub async fn send_follow_ups(ctx: &AppContext, follow_ups: Vec<FollowUp>) -> Result<(), WorkerError> {
    for follow_up in follow_ups {
        match follow_up {
            FollowUp::Handoff { family, message, delay } => ctx.queue.send(family, &message, delay).await?,
            FollowUp::Timer { timer, delay } => ctx.queue.send_timer(&timer, delay).await?,
        }
    }
    Ok(())
}

/// A timer due within SQS's delay limit travels as a delayed message; a later one is stored
/// for the sweeper (the regular job) to send when it comes within reach.
pub fn arm_timer(timer: Timer, now: DateTime<Utc>, commit: &mut StepCommit, follow_ups: &mut Vec<FollowUp>) {
    if (timer.due - now).num_seconds() <= MAX_SQS_DELAY_SECONDS {
        let delay = delay_until(now, timer.due);
        follow_ups.push(FollowUp::Timer { timer, delay });
    } else {
        commit.timers.push(timer);
    }
}

struct Plan<'a> {
    loaded: &'a LoadedIntegration,
    planned: &'a PlannedSubStep,
}

impl Plan<'_> {
    fn step_change(
        &self,
        message: &HandoffMessage,
        claimed: bool,
        max_attempts: u32,
        logs: Vec<LogLine>,
    ) -> StepChange {
        StepChange {
            step_id: message.step_id,
            attempt: message.attempt,
            claimed,
            status: StepStatus::Initial,
            payload: None,
            max_attempts,
            last_error: None,
            next_retry_at: None,
            completed_at: None,
            logs,
        }
    }

    fn next_handoff(
        &self,
        message: &HandoffMessage,
        sequence: u32,
        input: Option<handoff_core::exchange::Payload>,
    ) -> Option<FollowUp> {
        self.loaded.plan.get(sequence as usize).map(|next| FollowUp::Handoff {
            family: next.sub_step.family(),
            message: next_message(message, next, input),
            delay: 0,
        })
    }

    /// Turns a decision into the one conditional write and what follows it.
    fn commit_for(
        &self,
        message: &HandoffMessage,
        mut step: StepChange,
        decision: StepDecision,
        outcome: Result<StepOutput, Failure>,
        now: DateTime<Utc>,
    ) -> (StepCommit, Vec<FollowUp>) {
        let mut follow_ups = Vec::new();
        let mut commit =
            StepCommit::new(message.exchange_id.clone(), message.recovery, ExchangeChange::RequireNotFinal, now);
        match decision {
            StepDecision::MarkDone | StepDecision::Ignore => {
                let output = outcome.unwrap_or_default();
                if output.wait_for_sub_exchanges {
                    // Nothing to record on the step yet: the last sub-exchange hands this step on.
                    commit.exchange = set_status(
                        &[ExchangeStatus::Started, ExchangeStatus::WaitingForSubExchangesToFinish],
                        ExchangeStatus::WaitingForSubExchangesToFinish,
                    );
                    return (commit, follow_ups);
                }
                step.status = StepStatus::Done;
                step.completed_at = Some(now);
                step.payload = output.payload.clone();
                let next_sequence = output.skip_to.unwrap_or(self.planned.sequence + 1);
                commit.skip = (self.planned.sequence + 1..next_sequence).map(StepId::from_sequence).collect();
                commit.exchange = match (self.planned.sub_step, &output.wait) {
                    (SubStep::ExchangeTriggered, _) => {
                        set_status(&[ExchangeStatus::New, ExchangeStatus::Started], ExchangeStatus::Started)
                    }
                    (SubStep::ExchangeSignoff, _) => {
                        commit.result = message.input.clone();
                        commit.tally = message.parent.as_ref().map(|p| tally(p, true));
                        ExchangeChange::SetStatus {
                            from: NOT_FINAL.to_vec(),
                            to: ExchangeStatus::Completed,
                            error: None,
                            completed_at: Some(now),
                        }
                    }
                    (SubStep::ControlSubflow, _) => set_status(
                        &[ExchangeStatus::Started, ExchangeStatus::WaitingForSubExchangesToFinish],
                        ExchangeStatus::Started,
                    ),
                    (SubStep::ReceiveNotification | SubStep::ReceiveAgentNotification, _) => {
                        set_status(&[ExchangeStatus::WaitingOnExternalSystem], ExchangeStatus::Started)
                    }
                    (_, Some(_)) => set_status(&[ExchangeStatus::Started], ExchangeStatus::WaitingOnExternalSystem),
                    _ => ExchangeChange::RequireNotFinal,
                };
                if matches!(
                    self.planned.sub_step,
                    SubStep::ReceiveNotification | SubStep::ReceiveAgentNotification | SubStep::ControlSubflow
                ) {
                    commit.require_done = self.planned.sequence.checked_sub(1).map(StepId::from_sequence);
                }
                match output.wait {
                    // The callback (through the API) hands off to the waiting step.
                    Some(Wait { step_id, timeout_at }) => {
                        if let Some(due) = timeout_at {
                            let timer = Timer {
                                exchange_id: message.exchange_id.clone(),
                                recovery: message.recovery,
                                due,
                                kind: TimerKind::StepTimeout { step_id },
                            };
                            arm_timer(timer, now, &mut commit, &mut follow_ups);
                        }
                    }
                    None => {
                        let input = output.payload.or_else(|| message.input.clone());
                        follow_ups.extend(self.next_handoff(message, next_sequence, input));
                    }
                }
            }
            StepDecision::ScheduleRetry { next_attempt, delay_seconds } => {
                let due = now + ChronoDuration::seconds(delay_seconds as i64);
                step.next_retry_at = Some(due);
                step.last_error = outcome.err().map(|f| step_error(&f, now));
                let retry = HandoffMessage { attempt: next_attempt, not_before: Some(due), ..message.clone() };
                if delay_seconds as i64 <= MAX_SQS_DELAY_SECONDS {
                    let family = self.planned.sub_step.family();
                    follow_ups.push(FollowUp::Handoff { family, message: retry, delay: delay_until(now, due) });
                } else {
                    let timer = Timer {
                        exchange_id: message.exchange_id.clone(),
                        recovery: message.recovery,
                        due,
                        kind: TimerKind::Handoff { message: Box::new(retry) },
                    };
                    commit.timers.push(timer);
                }
            }
            StepDecision::MarkFailed(failure) => {
                step.status = StepStatus::Failed;
                step.last_error = Some(step_error(&failure, now));
                let secondary = self.is_secondary_destination();
                commit.errors.push(ErrorRecord {
                    exchange_id: message.exchange_id.clone(),
                    integration_code: message.integration_code.clone(),
                    step_id: Some(message.step_id),
                    sub_step: Some(message.sub_step),
                    classification: failure.classification,
                    message: failure.message.clone(),
                    retryable: failure.retryable,
                    exchange_failed: !secondary,
                    at: now,
                });
                if secondary {
                    // A secondary destination's failure is recorded on its step; the exchange goes on
                    // with the next destination (the rest of this one's sub-steps — an agent's — are skipped).
                    let next = self.after_destination();
                    commit.skip = (self.planned.sequence + 1..next).map(StepId::from_sequence).collect();
                    if self.planned.sub_step == SubStep::ReceiveAgentNotification {
                        commit.exchange =
                            set_status(&[ExchangeStatus::WaitingOnExternalSystem], ExchangeStatus::Started);
                    }
                    follow_ups.extend(self.next_handoff(message, next, message.input.clone()));
                } else {
                    commit.exchange = fail_exchange(&failure, Some(message.step_id), Some(message.sub_step), now);
                    commit.tally = message.parent.as_ref().map(|p| tally(p, false));
                }
            }
        }
        commit.step = Some(step);
        (commit, follow_ups)
    }

    /// The first sub-step after those of this sub-step's destination.
    fn after_destination(&self) -> u32 {
        self.loaded
            .plan
            .iter()
            .skip(self.planned.sequence as usize + 1)
            .find(|p| p.step_index != self.planned.step_index || p.destination != self.planned.destination)
            .map_or(self.loaded.plan.len() as u32, |p| p.sequence)
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

fn tally(link: &ParentLink, completed: bool) -> ParentTally {
    ParentTally { parent: link.exchange_id.clone(), step_id: link.step_id, completed }
}

/// A sub-exchange that just became final counted itself on its parent; if it was the last
/// one, the parent goes on.
pub async fn after_final(ctx: &AppContext, link: Option<&ParentLink>, commit: &StepCommit) -> Result<(), WorkerError> {
    match (link, &commit.tally) {
        (Some(link), Some(_)) => Ok(resume_parent_if_last(ctx, link).await?),
        _ => Ok(()),
    }
}

fn set_status(from: &[ExchangeStatus], to: ExchangeStatus) -> ExchangeChange {
    ExchangeChange::SetStatus { from: from.to_vec(), to, error: None, completed_at: None }
}

pub fn fail_exchange(
    failure: &Failure,
    step_id: Option<StepId>,
    sub_step: Option<SubStep>,
    at: DateTime<Utc>,
) -> ExchangeChange {
    ExchangeChange::SetStatus {
        from: NOT_FINAL.to_vec(),
        to: ExchangeStatus::Failed,
        error: Some(ExchangeError {
            classification: failure.classification,
            message: failure.message.clone(),
            retryable: failure.retryable,
            step_id,
            sub_step,
            at,
        }),
        completed_at: None,
    }
}

/// Fires a durable timer (control worker).
pub async fn fire_timer(ctx: &AppContext, timer: Timer) -> Result<(), WorkerError> {
    let now = Utc::now();
    if timer.due > now {
        // Swept early: wait out the rest.
        return Ok(ctx.queue.send_timer(&timer, delay_until(now, timer.due)).await?);
    }
    let Some(detail) = ctx.exchanges.get(&timer.exchange_id).await? else {
        return Ok(());
    };
    let exchange = &detail.exchange;
    let mut commit = StepCommit::new(timer.exchange_id.clone(), timer.recovery, ExchangeChange::RequireNotFinal, now);
    let (failure, step_id, sub_step, to) = match &timer.kind {
        TimerKind::Handoff { message } => {
            let family = message.sub_step.family();
            return Ok(ctx.queue.send(family, message, 0).await?);
        }
        TimerKind::Sla => {
            let failure = Failure::system(format!(
                "TimedOut: the exchange exceeded its SLA (due {})",
                timer.due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ));
            (failure, None, None, ExchangeStatus::TimedOut)
        }
        TimerKind::ParentTimedOut { parent } => {
            let failure = Failure::system(format!("TimedOut: its parent exchange {parent} timed out"));
            (failure, None, None, ExchangeStatus::TimedOut)
        }
        TimerKind::StepTimeout { step_id } => {
            let Some(step) = detail.steps.iter().find(|s| s.step_id == *step_id) else {
                return Ok(());
            };
            let failure = Failure {
                classification: ErrorClassification::System,
                retryable: false,
                message: "Timeout: no callback arrived in time".into(),
            };
            commit.step = Some(StepChange {
                step_id: *step_id,
                attempt: 1,
                claimed: false,
                status: StepStatus::Failed,
                payload: None,
                max_attempts: step.max_attempts,
                last_error: Some(step_error(&failure, now)),
                next_retry_at: None,
                completed_at: None,
                logs: vec![LogLine {
                    kind: handoff_core::exchange::LogType::System,
                    line: failure.message.clone(),
                    timestamp: now,
                    step_id: *step_id,
                }],
            });
            if step.destination.is_some()
                && secondary_timed_out(ctx, &timer, &detail, step, &failure, &mut commit).await?
            {
                return Ok(());
            }
            (failure, Some(*step_id), Some(step.sub_step), ExchangeStatus::Failed)
        }
    };
    commit.exchange = match fail_exchange(&failure, step_id, sub_step, now) {
        ExchangeChange::SetStatus { from, error, completed_at, .. } => {
            ExchangeChange::SetStatus { from, to, error, completed_at }
        }
        other => other,
    };
    commit.errors.push(ErrorRecord {
        exchange_id: timer.exchange_id.clone(),
        integration_code: exchange.integration_code.clone(),
        step_id,
        sub_step,
        classification: failure.classification,
        message: failure.message.clone(),
        retryable: failure.retryable,
        exchange_failed: true,
        at: now,
    });
    commit.tally = exchange.parent.as_ref().map(|p| tally(p, false));
    match ctx.exchanges.commit(&commit).await? {
        CommitOutcome::Applied => {
            tracing::warn!(status = ?to, reason = %failure.message, "timer fired");
            if to == ExchangeStatus::TimedOut {
                time_out_children(ctx, &timer.exchange_id).await?;
            }
            after_final(ctx, exchange.parent.as_ref(), &commit).await
        }
        CommitOutcome::Conflict => {
            tracing::info!("timer no longer relevant (the exchange or step moved on)");
            Ok(())
        }
    }
}

/// A secondary destination's agent that never reported: like any failed secondary, its
/// step fails (the commit already says so), the failure is listed without failing the
/// exchange, and the exchange goes on with the next destination. `false`: not a secondary.
async fn secondary_timed_out(
    ctx: &AppContext,
    timer: &Timer,
    detail: &handoff_core::exchange::ExchangeDetail,
    step: &ExchangeStep,
    failure: &Failure,
    commit: &mut StepCommit,
) -> Result<bool, WorkerError> {
    let exchange = &detail.exchange;
    let Some(loaded) = ctx
        .definitions
        .get(&exchange.integration_code, exchange.integration_version)
        .await
        .map_err(|e| WorkerError::Definition(e.to_string()))?
    else {
        return Ok(false);
    };
    let Some(planned) = loaded.plan.get(step.sequence as usize) else {
        return Ok(false);
    };
    let plan = Plan { loaded: &loaded, planned };
    if !plan.is_secondary_destination() {
        return Ok(false);
    }
    let now = commit.now;
    let next = plan.after_destination();
    commit.skip = (planned.sequence + 1..next).map(StepId::from_sequence).collect();
    commit.exchange = set_status(&[ExchangeStatus::WaitingOnExternalSystem], ExchangeStatus::Started);
    commit.errors.push(ErrorRecord {
        exchange_id: timer.exchange_id.clone(),
        integration_code: exchange.integration_code.clone(),
        step_id: Some(step.step_id),
        sub_step: Some(step.sub_step),
        classification: failure.classification,
        message: failure.message.clone(),
        retryable: failure.retryable,
        exchange_failed: false,
        at: now,
    });
    let index = detail.steps.iter().position(|s| s.step_id == step.step_id).unwrap_or(detail.steps.len());
    let handoff = loaded.plan.get(next as usize).map(|next| HandoffMessage {
        exchange_id: timer.exchange_id.clone(),
        integration_code: exchange.integration_code.clone(),
        integration_version: exchange.integration_version,
        step_id: StepId::from_sequence(next.sequence),
        sub_step: next.sub_step,
        attempt: 1,
        input: handoff_core::recovery::input_before(&detail.steps, index),
        parameters: exchange.parameters.clone(),
        not_before: None,
        recovery: timer.recovery,
        parent: exchange.parent.clone(),
    });
    match ctx.exchanges.commit(commit).await? {
        CommitOutcome::Applied => {
            tracing::warn!(reason = %failure.message, "a secondary destination timed out; the exchange goes on");
            if let Some(message) = handoff {
                let family = message.sub_step.family();
                ctx.queue.send(family, &message, 0).await?;
            }
        }
        CommitOutcome::Conflict => tracing::info!("timer no longer relevant (the exchange or step moved on)"),
    }
    Ok(true)
}

fn step_error(failure: &Failure, at: DateTime<Utc>) -> StepError {
    StepError { classification: failure.classification, message: failure.message.clone(), at }
}

fn next_message(
    current: &HandoffMessage,
    next: &PlannedSubStep,
    input: Option<handoff_core::exchange::Payload>,
) -> HandoffMessage {
    HandoffMessage {
        step_id: StepId::from_sequence(next.sequence),
        sub_step: next.sub_step,
        attempt: 1,
        input,
        not_before: None,
        ..current.clone()
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

pub fn delay_until(now: DateTime<Utc>, due: DateTime<Utc>) -> u32 {
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
                tracing::warn!(messageId = %record.message_id, error = %e, "message left on its queue for a retry");
            }
            (record.message_id.clone(), result.is_ok())
        }))
        .await;
        Ok(batch_response(results))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_core::exchange::Payload;
    use handoff_core::ids::{ExchangeId, IntegrationCode, IntegrationVersion};
    use handoff_ports::StoredIntegration;
    use serde_json::json;

    fn loaded() -> LoadedIntegration {
        let document = json!({"code": "C", "version": 1, "steps": [
            {"name": "t", "type": "transformation", "condition": "false", "function": {"jq": "."}},
            {"name": "d", "type": "delivery", "destinations": [
                {"kind": "rest", "main": true, "request": {"url": "http://main.example"}},
                {"kind": "rest", "request": {"url": "http://second.example"}}]},
            {"name": "p", "type": "invokeProcess", "kind": "process", "request": {"url": "http://p.example"}, "expectNotification": true}
        ]});
        loaded_from(document)
    }

    fn loaded_from(document: serde_json::Value) -> LoadedIntegration {
        let now = Utc::now();
        LoadedIntegration::from_stored(StoredIntegration {
            code: IntegrationCode::parse("C").unwrap(),
            version: IntegrationVersion::number(1).unwrap(),
            enabled: true,
            document,
            revision: 1,
            created_at: now,
            updated_at: now,
        })
        .unwrap()
    }

    fn message(loaded: &LoadedIntegration, sequence: u32) -> HandoffMessage {
        HandoffMessage {
            exchange_id: ExchangeId::new("x"),
            integration_code: loaded.stored.code.clone(),
            integration_version: loaded.stored.version,
            step_id: StepId::from_sequence(sequence),
            sub_step: loaded.plan[sequence as usize].sub_step,
            attempt: 1,
            input: Some(Payload::raw("[1]")),
            parameters: json!({}),
            not_before: None,
            recovery: 2,
            parent: None,
        }
    }

    fn commit(
        loaded: &LoadedIntegration,
        sequence: u32,
        decision: StepDecision,
        outcome: Result<StepOutput, Failure>,
    ) -> (StepCommit, Vec<FollowUp>) {
        let planned = &loaded.plan[sequence as usize];
        let plan = Plan { loaded, planned };
        let m = message(loaded, sequence);
        let step = plan.step_change(&m, false, 3, Vec::new());
        plan.commit_for(&m, step, decision, outcome, Utc::now())
    }

    #[test]
    fn a_false_condition_skips_the_rest_of_its_step_in_the_same_commit() {
        let l = loaded();
        let output = StepOutput { skip_to: Some(3), ..StepOutput::default() };
        let (c, f) = commit(&l, 1, StepDecision::MarkDone, Ok(output));
        assert_eq!(c.skip, vec![StepId::from_sequence(2)]);
        assert_eq!(c.recovery, 2, "commits are bound to the recovery generation");
        match &f[..] {
            [FollowUp::Handoff { message, .. }] => {
                assert_eq!(message.sub_step, SubStep::DeliverRest);
                assert_eq!(message.input, Some(Payload::raw("[1]")), "the input flows past the skipped step");
            }
            other => panic!("{other:?}"),
        }
    }

    /// main rest (1), secondary agent (2, 3, 4), secondary rest (5), signoff (6).
    fn loaded_with_secondary_agent() -> LoadedIntegration {
        let document = json!({"code": "C", "version": 1, "steps": [
            {"name": "d", "type": "delivery", "destinations": [
                {"kind": "rest", "main": true, "request": {"url": "http://main.example"}},
                {"kind": "agent", "healthUrl": "http://agent.example/health", "request": {"url": "http://agent.example"}},
                {"kind": "rest", "request": {"url": "http://third.example"}}]}
        ]});
        loaded_from(document)
    }

    #[test]
    fn a_failed_secondary_agent_skips_its_remaining_sub_steps_and_the_next_destination_runs() {
        let l = loaded_with_secondary_agent();
        let failure = Failure::transient("agent down");
        let (c, f) = commit(&l, 2, StepDecision::MarkFailed(failure.clone()), Err(failure));
        assert_eq!(c.skip, vec![StepId::from_sequence(3), StepId::from_sequence(4)]);
        assert_eq!(c.exchange, ExchangeChange::RequireNotFinal);
        assert!(
            matches!(&f[..], [FollowUp::Handoff { message, .. }] if message.sub_step == SubStep::DeliverRest && message.step_id == StepId::from_sequence(5))
        );
        // A rejected report of a secondary agent ends the wait: the exchange runs on.
        let failure = Failure::business("the agent reported failure: no");
        let (c, f) = commit(&l, 4, StepDecision::MarkFailed(failure.clone()), Err(failure));
        assert!(c.skip.is_empty());
        assert!(
            matches!(c.exchange, ExchangeChange::SetStatus { to: ExchangeStatus::Started, ref from, .. } if from == &[ExchangeStatus::WaitingOnExternalSystem])
        );
        assert!(matches!(&f[..], [FollowUp::Handoff { message, .. }] if message.step_id == StepId::from_sequence(5)));
    }

    #[test]
    fn a_failed_secondary_destination_is_recorded_and_the_exchange_goes_on() {
        let l = loaded();
        let (c, f) = commit(&l, 4, StepDecision::MarkFailed(Failure::business("nope")), Err(Failure::business("nope")));
        assert_eq!(c.exchange, ExchangeChange::RequireNotFinal);
        assert_eq!(c.errors.len(), 1);
        assert!(!c.errors[0].exchange_failed);
        assert!(matches!(&f[..], [FollowUp::Handoff { .. }]));
        let (c, f) = commit(&l, 3, StepDecision::MarkFailed(Failure::business("nope")), Err(Failure::business("nope")));
        assert!(matches!(c.exchange, ExchangeChange::SetStatus { to: ExchangeStatus::Failed, .. }));
        assert!(f.is_empty(), "a failed main destination stops the exchange");
    }

    #[test]
    fn long_retry_delays_become_stored_timers_and_short_ones_delayed_messages() {
        let l = loaded();
        let (c, f) = commit(
            &l,
            3,
            StepDecision::ScheduleRetry { next_attempt: 2, delay_seconds: 5 },
            Err(Failure::transient("503")),
        );
        assert!(c.timers.is_empty());
        assert!(matches!(&f[..], [FollowUp::Handoff { delay: 5, message, .. }] if message.attempt == 2));
        assert_eq!(c.step.as_ref().and_then(|s| s.last_error.as_ref()).map(|e| e.message.as_str()), Some("503"));
        let (c, f) = commit(
            &l,
            3,
            StepDecision::ScheduleRetry { next_attempt: 2, delay_seconds: 3600 },
            Err(Failure::transient("503")),
        );
        assert!(f.is_empty());
        assert!(matches!(&c.timers[..], [Timer { kind: TimerKind::Handoff { .. }, .. }]));
    }

    #[test]
    fn an_armed_wait_moves_the_exchange_to_waiting_and_hands_off_nothing() {
        let l = loaded();
        let wait =
            Wait { step_id: StepId::from_sequence(6), timeout_at: Some(Utc::now() + ChronoDuration::seconds(30)) };
        let (c, f) =
            commit(&l, 5, StepDecision::MarkDone, Ok(StepOutput { wait: Some(wait), ..StepOutput::default() }));
        assert!(matches!(c.exchange, ExchangeChange::SetStatus { to: ExchangeStatus::WaitingOnExternalSystem, .. }));
        assert!(matches!(&f[..], [FollowUp::Timer { timer: Timer { kind: TimerKind::StepTimeout { .. }, .. }, .. }]));
        let (c, _) = commit(&l, 6, StepDecision::MarkDone, Ok(StepOutput::default()));
        assert_eq!(c.require_done, Some(StepId::from_sequence(5)), "a callback cannot overtake its call");
        assert!(matches!(c.exchange, ExchangeChange::SetStatus { to: ExchangeStatus::Started, .. }));
    }
}
