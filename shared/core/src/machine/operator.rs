//! Inputs from outside the pipeline: an operator recovers an exchange (also onto another
//! version) or retries a retrying step now, an external system answers a waiting step, and
//! a requester signs an exchange off.

use super::{Pipeline, MAX_SQS_DELAY_SECONDS};
use crate::commit::{RecoveryCommit, ReexecutionCommit};
use crate::exchange::{Exchange, ExchangeDetail, ExchangeStatus, LogLine, LogType, StepStatus};
use crate::handoff::{outbox_entry, sla_timer, CallbackToken, HandoffMessage, Timer};
use crate::ids::{IntegrationVersion, StepId};
use crate::plan::SubStep;
use crate::recovery::{check_compatible, input_before, resume_point, RecoveryError, ResumeFrom};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Everything a recovery writes and sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    /// The write: back to `Started` at the next generation, with the resume point's steps
    /// reset, the resume handoff's outbox entry and the new SLA timer stored with it.
    pub commit: RecoveryCommit,
    /// Sent once the write applied (its outbox entry is then taken back).
    pub resume: HandoffMessage,
    pub outbox: Timer,
    /// The new SLA timer (stored in the write); one due within a delayed message's reach is
    /// also sent at once, for precision.
    pub sla: Option<Timer>,
    /// A subflow that failed because sub-exchanges failed re-drives only those: recover
    /// its failed children too.
    pub redrive_children: bool,
}

impl Recovery {
    /// Records who asked (an operator's `sub`, or the job that re-drives failures) on the
    /// step the exchange resumes at, with where and onto which version.
    pub fn requested_by(mut self, who: &str) -> Self {
        let onto = match self.commit.integration_version {
            Some(version) => format!(" onto version {version}"),
            None => String::new(),
        };
        self.commit.log = Some(LogLine {
            kind: LogType::System,
            line: format!("Recovery {} requested by {who}: resumes at this step{onto}", self.commit.recovery + 1),
            timestamp: self.commit.now,
            step_id: self.resume.step_id,
        });
        self
    }

    pub fn resumed_at(&self) -> StepId {
        self.resume.step_id
    }
    pub fn recoveries(&self) -> u32 {
        self.resume.recovery
    }
    /// The SLA timer to send as a delayed message now, if it falls due soon.
    pub fn sla_due_soon(&self) -> Option<&Timer> {
        self.sla.as_ref().filter(|t| (t.due - self.commit.now).num_seconds() <= MAX_SQS_DELAY_SECONDS)
    }
}

/// Recovers `detail` (running `current`) onto `target` (the same pipeline, or version
/// `target_version` whose plan must have the same shape).
pub fn recovery(
    detail: &ExchangeDetail,
    current: Pipeline<'_>,
    target: Pipeline<'_>,
    target_version: IntegrationVersion,
    from: ResumeFrom,
    outbox_delay: Duration,
    now: DateTime<Utc>,
) -> Result<Recovery, RecoveryError> {
    let exchange = &detail.exchange;
    let failed_step = exchange.error.as_ref().and_then(|e| e.step_id);
    let point = resume_point(exchange.status, failed_step, &detail.steps, from)?;
    let onto = (target_version != exchange.integration_version).then_some(target_version);
    if onto.is_some() {
        check_compatible(current.plan, target.plan)
            .map_err(|problem| RecoveryError::IncompatibleVersion { version: target_version.to_string(), problem })?;
    }
    let planned = target.planned(point.step_id).ok_or(RecoveryError::NothingToResume)?;
    let mut recovered = exchange.clone();
    recovered.recoveries += 1;
    recovered.integration_version = target_version;
    let resume = HandoffMessage::at_step(&recovered, point.step_id, planned.sub_step, 1, point.input);
    // The resume handoff and the new SLA are stored with the recovery itself: a crash after
    // the write leaves them to the regular job instead of losing them.
    let outbox = outbox_entry(&resume, now, outbox_delay);
    let sla = sla_timer(&recovered, target.definition.sla_seconds, now);
    let redrive_children = planned.sub_step == SubStep::ControlSubflow;
    let commit = RecoveryCommit {
        exchange_id: exchange.exchange_id.clone(),
        recovery: exchange.recoveries,
        integration_version: onto,
        reset: point.reset,
        clear_sub_failures: redrive_children.then_some(point.step_id),
        timers: std::iter::once(outbox.clone()).chain(sla.clone()).collect(),
        log: None,
        now,
    };
    Ok(Recovery { commit, resume, outbox, sla, redrive_children })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManualRetryError {
    #[error("exchange has no step {0}")]
    UnknownStep(StepId),
    #[error(
        "the exchange is Completed: only a failed secondary destination of it can run again, and step {0} is not one"
    )]
    NotAFailedSecondary(StepId),
    #[error("step {0} is an agent destination: running one again on a Completed exchange is not supported yet")]
    AgentNotReexecutable(StepId),
    #[error("the exchange is {status}; recover it instead (POST /exchanges/{id}/recover)")]
    ExchangeFinal { status: &'static str, id: String },
    #[error("step {0} is not waiting for a retry")]
    NotRetrying(StepId),
}

/// A manual retry of a step waiting for its next automatic attempt: that attempt runs now
/// (and counts), logging who asked; the scheduled one then finds it done and changes nothing.
pub fn manual_retry(
    detail: &ExchangeDetail,
    step_id: StepId,
    requested_by: &str,
) -> Result<HandoffMessage, ManualRetryError> {
    let index = detail.steps.iter().position(|s| s.step_id == step_id).ok_or(ManualRetryError::UnknownStep(step_id))?;
    let step = &detail.steps[index];
    let exchange = &detail.exchange;
    if exchange.status.is_final() {
        return Err(ManualRetryError::ExchangeFinal {
            status: exchange.status.name(),
            id: exchange.exchange_id.to_string(),
        });
    }
    if step.status != StepStatus::Initial || step.next_retry_at.is_none() {
        return Err(ManualRetryError::NotRetrying(step_id));
    }
    let message = HandoffMessage::at_step(
        exchange,
        step_id,
        step.sub_step,
        step.attempts + 1,
        input_before(&detail.steps, index),
    );
    Ok(HandoffMessage { requested_by: Some(requested_by.to_string()), ..message })
}

/// A failed secondary destination of a Completed exchange run again (`POST
/// /exchanges/{id}/steps/{stepId}/retry`): the reset of its sub-step (a fresh run under its
/// retry policy, with the same `Idempotency-Key`) and the handoff that runs it on the
/// Completed exchange. Its outcome shows in the exchange's `destinations`; nothing else moves.
/// A re-execution reset but never handed on (the send failed) is handed on again, with no
/// second reset (`None`).
pub fn reexecute_secondary(
    pipeline: Pipeline<'_>,
    detail: &ExchangeDetail,
    step_id: StepId,
    requested_by: &str,
    now: DateTime<Utc>,
) -> Result<(Option<ReexecutionCommit>, HandoffMessage), ManualRetryError> {
    let index = detail.steps.iter().position(|s| s.step_id == step_id).ok_or(ManualRetryError::UnknownStep(step_id))?;
    let step = &detail.steps[index];
    let exchange = &detail.exchange;
    let secondary = pipeline.planned(step_id).is_some_and(|planned| pipeline.is_secondary_destination(planned));
    let reset_not_run = step.status == StepStatus::Initial && step.attempts == 0;
    if exchange.status != ExchangeStatus::Completed
        || !secondary
        || !(step.status == StepStatus::Failed || reset_not_run)
    {
        return Err(ManualRetryError::NotAFailedSecondary(step_id));
    }
    if !matches!(step.sub_step, SubStep::DeliverRest | SubStep::DeliverSftp | SubStep::DeliverFileUpload) {
        return Err(ManualRetryError::AgentNotReexecutable(step_id));
    }
    let was = step.last_error.as_ref().map_or_else(String::new, |e| format!(" (it had failed: {})", e.message));
    let commit = ReexecutionCommit {
        exchange_id: exchange.exchange_id.clone(),
        recovery: exchange.recoveries,
        step: step_id,
        log: LogLine {
            kind: LogType::System,
            line: format!("Re-executed by {requested_by}: the secondary destination runs again{was}"),
            timestamp: now,
            step_id,
        },
        now,
    };
    let message = HandoffMessage {
        reexecution: true,
        ..HandoffMessage::at_step(exchange, step_id, step.sub_step, 1, input_before(&detail.steps, index))
    };
    Ok(((!reset_not_run).then_some(commit), message))
}

/// Whether a callback for `token` comes too late to matter: its exchange is final, or was
/// recovered since the token was handed out.
pub fn callback_is_late(token: &CallbackToken, exchange: &Exchange) -> bool {
    exchange.status.is_final() || exchange.recoveries != token.recovery
}

/// An accepted callback: the handoff to the waiting step, on the stored notification, and
/// its outbox entry — written together with using the token, so a `202` cannot be lost.
pub fn callback_accepted(
    token: &CallbackToken,
    notification: crate::exchange::Payload,
    outbox_delay: Duration,
    now: DateTime<Utc>,
) -> (HandoffMessage, Timer) {
    let message = HandoffMessage::callback(token, notification);
    let outbox = outbox_entry(&message, now, outbox_delay);
    (message, outbox)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignoffError {
    #[error("exchange {0} does not wait for a sign-off by its requester (its integration signs off by itself)")]
    NotRequesterSignoff(String),
    #[error("exchange {id} is {status}: only an exchange waiting for its sign-off (W) can be signed off")]
    NotAwaiting { id: String, status: &'static str },
    #[error("exchange {0} was signed off already")]
    SignedOff(String),
}

/// The requester signs `detail` off: the handoff to its `ExchangeSignoff`, once the
/// `AwaitSignoff` before it is done (the exchange waits, `W`). Sending it twice is harmless:
/// the sign-off step is claimed once, and it requires the wait to be done.
pub fn requester_signoff(detail: &ExchangeDetail, signed_off_by: &str) -> Result<HandoffMessage, SignoffError> {
    let exchange = &detail.exchange;
    let id = exchange.exchange_id.to_string();
    let at = detail.steps.iter().position(|s| s.sub_step == SubStep::AwaitSignoff);
    let Some(wait) = at else { return Err(SignoffError::NotRequesterSignoff(id)) };
    let Some(signoff) = detail.steps.get(wait + 1).filter(|s| s.sub_step == SubStep::ExchangeSignoff) else {
        return Err(SignoffError::NotRequesterSignoff(id));
    };
    if signoff.status == StepStatus::Done || exchange.status == ExchangeStatus::Completed {
        return Err(SignoffError::SignedOff(id));
    }
    if exchange.status != ExchangeStatus::WaitingOnExternalSystem || detail.steps[wait].status != StepStatus::Done {
        return Err(SignoffError::NotAwaiting { id, status: exchange.status.name() });
    }
    let message = HandoffMessage::at_step(
        exchange,
        signoff.step_id,
        SubStep::ExchangeSignoff,
        1,
        input_before(&detail.steps, wait + 1),
    );
    Ok(HandoffMessage { requested_by: Some(signed_off_by.to_string()), ..message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::{ExchangeError, ExchangeStatus};
    use crate::handoff::TimerKind;

    use crate::machine::attempt::tests::Fixture;
    use crate::retry::ErrorClassification;
    use serde_json::json;

    fn fixture(url: &str) -> Fixture {
        Fixture::new(json!({"code": "C", "version": 1, "slaSeconds": 600, "steps": [
            {"name": "t", "type": "transformation", "function": {"jq": "."}},
            {"name": "d", "type": "delivery", "destinations": [{"kind": "rest", "request": {"url": url}}]}]}))
    }

    /// triggered (0) done, transform (1) done with output, deliver (2) failed, signoff (3).
    fn failed(f: &Fixture) -> ExchangeDetail {
        let now = Utc::now();
        let steps = [(StepStatus::Done, 1), (StepStatus::Done, 1), (StepStatus::Failed, 1), (StepStatus::Initial, 1)];
        let mut d = f.detail(ExchangeStatus::Failed, 0, &steps);
        d.steps[1].payload = Some(crate::exchange::Payload::raw("[2]"));
        d.exchange.error = Some(ExchangeError {
            classification: ErrorClassification::Business,
            code: crate::error_code::ErrorCode::TargetRejected,
            message: "400".into(),
            retryable: false,
            step_id: Some(StepId::from_sequence(2)),
            sub_step: Some(SubStep::DeliverRest),
            at: now,
        });
        d
    }

    #[test]
    fn a_recovery_resumes_at_the_failed_step_on_its_input_with_outbox_and_sla_stored() {
        let f = fixture("http://t.example");
        let d = failed(&f);
        let now = Utc::now();
        let version = d.exchange.integration_version;
        let r = recovery(&d, f.pipeline(), f.pipeline(), version, ResumeFrom::FailedStep, Duration::from_secs(60), now)
            .expect("recoverable");
        assert_eq!(r.resumed_at(), StepId::from_sequence(2));
        assert_eq!(r.recoveries(), 1);
        assert_eq!(r.resume.input, Some(crate::exchange::Payload::raw("[2]")));
        assert_eq!(r.commit.recovery, 0, "the write requires the generation being recovered");
        assert_eq!(r.commit.integration_version, None);
        assert!(matches!(
            &r.commit.timers[..],
            [Timer { kind: TimerKind::Handoff { .. }, .. }, Timer { kind: TimerKind::Sla, recovery: 1, .. }]
        ));
        assert!(r.sla_due_soon().is_some());
        assert!(!r.redrive_children);
        assert_eq!(r.commit.log, None);
        let asked = r.requested_by("alice");
        let log = asked.commit.log.expect("the recovery is logged");
        assert_eq!(log.step_id, StepId::from_sequence(2), "on the step it resumes at");
        assert!(asked.commit.reset.contains(&log.step_id), "a step the recovery writes anyway");
        assert_eq!(log.line, "Recovery 1 requested by alice: resumes at this step");
    }

    #[test]
    fn a_running_or_completed_exchange_is_not_recovered_and_a_differently_shaped_version_cannot_take_over() {
        let f = fixture("http://t.example");
        let mut d = failed(&f);
        let version = d.exchange.integration_version;
        for status in [ExchangeStatus::Started, ExchangeStatus::Completed] {
            d.exchange.status = status;
            let e = recovery(
                &d,
                f.pipeline(),
                f.pipeline(),
                version,
                ResumeFrom::FailedStep,
                Duration::from_secs(60),
                Utc::now(),
            );
            assert_eq!(e, Err(RecoveryError::NotRecoverable(status)));
        }
        d.exchange.status = ExchangeStatus::Failed;
        let other = Fixture::new(json!({"code": "C", "version": 2, "steps": [
            {"name": "d", "type": "delivery", "destinations": [{"kind": "rest", "request": {"url": "http://t.example"}}]}]}));
        let v2 = IntegrationVersion::number(2).expect("version");
        let e = recovery(
            &d,
            f.pipeline(),
            other.pipeline(),
            v2,
            ResumeFrom::FailedStep,
            Duration::from_secs(60),
            Utc::now(),
        );
        assert!(matches!(e, Err(RecoveryError::IncompatibleVersion { .. })));
        let same_shape = fixture("http://other.example");
        let r = recovery(
            &d,
            f.pipeline(),
            same_shape.pipeline(),
            v2,
            ResumeFrom::FailedStep,
            Duration::from_secs(60),
            Utc::now(),
        )
        .expect("same shape");
        assert_eq!(r.commit.integration_version, Some(v2));
        assert_eq!(r.resume.integration_version, v2);
    }

    #[test]
    fn a_manual_retry_runs_the_next_attempt_of_a_retrying_step_only() {
        let f = fixture("http://t.example");
        let mut d = failed(&f);
        assert!(matches!(
            manual_retry(&d, StepId::from_sequence(2), "ops"),
            Err(ManualRetryError::ExchangeFinal { .. })
        ));
        d.exchange.status = ExchangeStatus::Started;
        assert_eq!(
            manual_retry(&d, StepId::from_sequence(2), "ops"),
            Err(ManualRetryError::NotRetrying(StepId::from_sequence(2)))
        );
        d.steps[2].status = StepStatus::Initial;
        d.steps[2].next_retry_at = Some(Utc::now());
        let m = manual_retry(&d, StepId::from_sequence(2), "ops").expect("retrying");
        assert_eq!((m.attempt, m.input.clone()), (2, Some(crate::exchange::Payload::raw("[2]"))));
        assert_eq!(m.requested_by.as_deref(), Some("ops"));
        assert_eq!(
            manual_retry(&d, StepId::from_sequence(9), "ops"),
            Err(ManualRetryError::UnknownStep(StepId::from_sequence(9)))
        );
    }

    #[test]
    fn only_a_failed_secondary_of_a_completed_exchange_runs_again_once_reset() {
        let f = Fixture::new(json!({"code": "C", "version": 1, "steps": [
            {"name": "d", "type": "delivery", "destinations": [
                {"kind": "rest", "main": true, "request": {"url": "http://main.example"}},
                {"kind": "agent", "healthUrl": "http://agent.example/h", "request": {"url": "http://agent.example"}},
                {"kind": "rest", "request": {"url": "http://third.example"}}]}]}));
        // triggered, main, agent (health, invoke, report), third, signoff.
        let (done, failed) = ((StepStatus::Done, 1), (StepStatus::Failed, 3));
        let detail = f.detail(
            ExchangeStatus::Completed,
            1,
            &[done, done, failed, (StepStatus::Skipped, 0), (StepStatus::Skipped, 0), failed, done],
        );
        let now = Utc::now();
        let (reset, message) =
            reexecute_secondary(f.pipeline(), &detail, StepId::from_sequence(5), "ops", now).expect("ok");
        let reset = reset.expect("a reset of the failed step");
        assert_eq!((reset.step, reset.recovery), (StepId::from_sequence(5), 1));
        assert!(reset.log.line.starts_with("Re-executed by ops"));
        assert!(message.reexecution && message.attempt == 1 && message.sub_step == SubStep::DeliverRest);
        assert_eq!(message.recovery, 1);
        for step in [1, 6] {
            assert_eq!(
                reexecute_secondary(f.pipeline(), &detail, StepId::from_sequence(step), "ops", now).map(|_| ()),
                Err(ManualRetryError::NotAFailedSecondary(StepId::from_sequence(step)))
            );
        }
        assert_eq!(
            reexecute_secondary(f.pipeline(), &detail, StepId::from_sequence(2), "ops", now).map(|_| ()),
            Err(ManualRetryError::AgentNotReexecutable(StepId::from_sequence(2)))
        );
        let mut running = detail.clone();
        running.exchange.status = ExchangeStatus::Started;
        assert!(reexecute_secondary(f.pipeline(), &running, StepId::from_sequence(5), "ops", now).is_err());
        // Reset but never handed on: handed on again, not reset twice.
        let mut lost = detail;
        lost.steps[5].status = StepStatus::Initial;
        lost.steps[5].attempts = 0;
        let (reset, _) = reexecute_secondary(f.pipeline(), &lost, StepId::from_sequence(5), "ops", now).expect("ok");
        assert!(reset.is_none());
    }
}
