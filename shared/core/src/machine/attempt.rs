//! An attempt of a sub-step finished: the one write that records it and the handoff, retry
//! or timer that follows. Also the retry decision under the policy in force now.

use super::{step_error, Decision, Effect, Pipeline, StepOutput, Wait};
use crate::commit::{ErrorRecord, ExchangeChange, StepChange, StepCommit};
use crate::endpoint::{Observation, Retrying, SystemFailure};
use crate::exchange::{
    decide_after_attempt, AttemptOutcome, ExchangeError, ExchangeEvent, LogLine, LogType, Payload, StepDecision,
    StepStatus,
};
use crate::handoff::{HandoffMessage, Timer, TimerKind};
use crate::ids::StepId;
use crate::plan::{PlannedSubStep, SubStep};
use crate::retry::ErrorClassification;
use crate::retry::Failure;
use chrono::{DateTime, Duration as ChronoDuration, Utc};

/// What an executor reported for one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// Whether the attempt held a claim (sub-steps with an external side effect).
    pub claimed: bool,
    pub outcome: Result<StepOutput, Failure>,
    pub logs: Vec<LogLine>,
    /// What the next sub-step runs on when this one's input is not the pipeline's payload
    /// (a callback's notification): the payload that flows past it, on success or failure.
    pub pass_on: Option<Payload>,
    /// Problems to list for operators that do not fail the step by themselves (the files an
    /// agent rejected); recorded once the attempt is decided.
    pub recorded: Vec<Failure>,
    /// When the attempt began (the step's start, if it is the first).
    pub started_at: Option<DateTime<Utc>>,
}

/// The attempt `message.attempt` of `planned` finished. `random` (in `[0, 1)`) is the
/// retry jitter; the policy is the one in force now, so a raised `maxAttempts` lets a
/// retrying step go on and a lowered one fails it at this decision.
pub fn attempt_finished(
    pipeline: Pipeline<'_>,
    planned: &PlannedSubStep,
    message: &HandoffMessage,
    attempt: Attempt,
    random: f64,
    now: DateTime<Utc>,
) -> Decision {
    let policy = pipeline.retry_policy(planned);
    let outcome = match &attempt.outcome {
        Ok(_) => AttemptOutcome::Succeeded,
        Err(failure) => AttemptOutcome::Failed(failure.clone()),
    };
    let decision = decide_after_attempt(StepStatus::Initial, message.attempt, &policy, outcome, random);
    // A decided attempt (not one to be retried) hands on what the executor says flows past
    // it, and lists its side errors; a retry runs on the same input again.
    let decided = !matches!(decision, StepDecision::ScheduleRetry { .. });
    let message = match attempt.pass_on {
        Some(payload) if decided => HandoffMessage { input: Some(payload), ..message.clone() },
        _ => message.clone(),
    };
    let mut step = step_change(&message, attempt.claimed, policy.max_attempts, attempt.logs, now);
    step.started_at = attempt.started_at;
    let mut result = record(pipeline, planned, &message, step, decision, attempt.outcome, now);
    if decided {
        let side = attempt.recorded.iter().map(|failure| {
            ErrorRecord::of(
                &message.exchange_id,
                &message.integration_code,
                Some((message.step_id, message.sub_step)),
                failure,
                false,
                now,
            )
        });
        result.commit.errors.extend(side);
    }
    result
}

/// A handoff whose attempt number is past the `maxAttempts` now in force (lowered while the
/// step was retrying): the step fails without running again.
pub fn beyond_policy(
    pipeline: Pipeline<'_>,
    planned: &PlannedSubStep,
    message: &HandoffMessage,
    now: DateTime<Utc>,
) -> Option<Decision> {
    let max_attempts = pipeline.retry_policy(planned).max_attempts;
    if message.attempt <= max_attempts {
        return None;
    }
    let failure = Failure::system(format!(
        "retries exhausted: attempt {} is beyond maxAttempts {max_attempts} now in force",
        message.attempt
    ));
    let step = step_change(message, false, max_attempts, Vec::new(), now);
    Some(record(pipeline, planned, message, step, StepDecision::MarkFailed(failure.clone()), Err(failure), now))
}

/// The step's change for this attempt; an attempt someone asked to run now says who, in the
/// same write (the audit trail of manual retries).
fn step_change(
    message: &HandoffMessage,
    claimed: bool,
    max_attempts: u32,
    mut logs: Vec<LogLine>,
    now: DateTime<Utc>,
) -> StepChange {
    if let Some(by) = &message.requested_by {
        let line = format!("Attempt {} ran now: a manual retry requested by {by}", message.attempt);
        logs.insert(0, LogLine { kind: LogType::System, line, timestamp: now, step_id: message.step_id });
    }
    StepChange {
        step_id: message.step_id,
        attempt: message.attempt,
        claimed,
        status: StepStatus::Initial,
        payload: None,
        max_attempts,
        last_error: None,
        next_retry_at: None,
        started_at: None,
        completed_at: None,
        logs,
    }
}

/// Turns a step decision into the one conditional write and what follows it.
fn record(
    pipeline: Pipeline<'_>,
    planned: &PlannedSubStep,
    message: &HandoffMessage,
    mut step: StepChange,
    decision: StepDecision,
    outcome: Result<StepOutput, Failure>,
    now: DateTime<Utc>,
) -> Decision {
    let mut d = Decision::new(StepCommit::new(
        message.exchange_id.clone(),
        message.recovery,
        message.exchange_requirement(),
        now,
    ));
    match decision {
        StepDecision::MarkDone | StepDecision::Ignore => {
            let output = outcome.unwrap_or_default();
            if output.wait_for_sub_exchanges {
                // Nothing to record on the step yet: the last sub-exchange hands this step on.
                d.commit.exchange = ExchangeChange::on(ExchangeEvent::WaitingForSubExchanges);
                return d;
            }
            step.status = StepStatus::Done;
            step.completed_at = Some(now);
            step.payload = output.payload.clone();
            if planned.sub_step.has_external_effect() {
                d.effects.push(Effect::observe(pipeline, message, Observation::Succeeded));
            }
            if message.reexecution {
                // Run again on a Completed exchange: the destination is done, nothing follows.
                d.commit.step = Some(step);
                return d;
            }
            let next_sequence = output.skip_to.unwrap_or(planned.sequence + 1);
            d.commit.skip = (planned.sequence + 1..next_sequence).map(StepId::from_sequence).collect();
            let event = match (planned.sub_step, &output.wait) {
                (SubStep::ExchangeTriggered, _) => Some(ExchangeEvent::Triggered),
                (SubStep::ExchangeSignoff, _) => Some(ExchangeEvent::SignedOff),
                (SubStep::ControlSubflow, _) => Some(ExchangeEvent::SubExchangesFinished),
                (SubStep::ReceiveNotification | SubStep::ReceiveAgentNotification, _) => {
                    Some(ExchangeEvent::CallbackTaken)
                }
                (_, Some(_)) => Some(ExchangeEvent::WaitArmed),
                _ => None,
            };
            if let Some(event) = event {
                d.commit.exchange = ExchangeChange::on(event);
            }
            if planned.sub_step == SubStep::ExchangeSignoff {
                d.commit.exchange = match d.commit.exchange {
                    ExchangeChange::SetStatus { from, to, error, .. } => {
                        ExchangeChange::SetStatus { from, to, error, completed_at: Some(now) }
                    }
                    other => other,
                };
                d.commit.result = message.input.clone();
                d.count_on_parent(message.parent.as_ref(), true);
                if pipeline.definition.events.is_some() {
                    d.effects.push(Effect::ConsumeEvents {
                        code: message.integration_code.clone(),
                        exchange_id: message.exchange_id.clone(),
                    });
                }
            }
            let signed_off_by_requester = planned.sub_step == SubStep::ExchangeSignoff
                && planned
                    .sequence
                    .checked_sub(1)
                    .and_then(|before| pipeline.plan.get(before as usize))
                    .is_some_and(|before| before.sub_step == SubStep::AwaitSignoff);
            if signed_off_by_requester
                || matches!(
                    planned.sub_step,
                    SubStep::ReceiveNotification | SubStep::ReceiveAgentNotification | SubStep::ControlSubflow
                )
            {
                // A callback (the last sub-exchange, a sign-off) must not overtake the step that armed it.
                d.commit.require_done = planned.sequence.checked_sub(1).map(StepId::from_sequence);
            }
            match output.wait {
                // The callback (through the API) hands off to the waiting step.
                Some(Wait { step_id, timeout_at }) => {
                    if let Some(due) = timeout_at {
                        d.arm(Timer {
                            exchange_id: message.exchange_id.clone(),
                            recovery: message.recovery,
                            due,
                            kind: TimerKind::StepTimeout { step_id },
                        });
                    }
                }
                None => {
                    let input = output.payload.or_else(|| message.input.clone());
                    d.effects.extend(pipeline.handoff_to(message, next_sequence, input));
                }
            }
        }
        StepDecision::ScheduleRetry { next_attempt, delay_seconds } => {
            let due = now + ChronoDuration::seconds(delay_seconds as i64);
            step.next_retry_at = Some(due);
            let failure = outcome.err();
            if let Some(failure) = failure.as_ref().filter(|f| f.is_connection_type()) {
                let retrying = Retrying {
                    exchange_id: message.exchange_id.clone(),
                    step_id: message.step_id,
                    error: failure.message.clone(),
                    at: now,
                    next_attempt_at: due,
                    attempt: message.attempt,
                    max_attempts: step.max_attempts,
                };
                d.effects.push(Effect::observe(pipeline, message, Observation::Retrying(retrying)));
            }
            step.last_error = failure.map(|f| step_error(&f, now));
            let retry = message.retry(next_attempt, due);
            if delay_seconds as i64 <= super::MAX_SQS_DELAY_SECONDS {
                let delay = super::delay_until(now, due);
                d.effects.push(Effect::Send { family: planned.sub_step.family(), message: retry, delay });
            } else {
                d.commit.timers.push(Timer {
                    exchange_id: message.exchange_id.clone(),
                    recovery: message.recovery,
                    due,
                    kind: TimerKind::Handoff { message: Box::new(retry) },
                });
            }
        }
        StepDecision::MarkFailed(failure) => {
            step.status = StepStatus::Failed;
            step.last_error = Some(step_error(&failure, now));
            let secondary = pipeline.is_secondary_destination(planned);
            let at = Some((message.step_id, message.sub_step));
            d.commit.record_error(ErrorRecord::of(
                &message.exchange_id,
                &message.integration_code,
                at,
                &failure,
                !secondary,
                now,
            ));
            if secondary && message.reexecution {
                // Run again on a Completed exchange and failed again: recorded on its step, as before.
            } else if secondary {
                // A secondary destination's failure is recorded on its step; the exchange goes on
                // with the next destination (the rest of this one's sub-steps — an agent's — are skipped).
                let next = pipeline.after_destination(planned);
                d.commit.skip = (planned.sequence + 1..next).map(StepId::from_sequence).collect();
                if planned.sub_step == SubStep::ReceiveAgentNotification {
                    d.commit.exchange = ExchangeChange::on(ExchangeEvent::CallbackTaken);
                }
                d.effects.extend(pipeline.handoff_to(message, next, message.input.clone()));
            } else {
                d.commit.exchange =
                    ExchangeChange::fail(ExchangeEvent::StepFailed, ExchangeError::of(&failure, at, now));
                d.count_on_parent(message.parent.as_ref(), false);
                // Business errors and secondary destinations never halt an endpoint.
                if failure.classification == ErrorClassification::System {
                    let failed = SystemFailure {
                        exchange_id: message.exchange_id.clone(),
                        step_id: message.step_id,
                        code: failure.code,
                        error: failure.message.clone(),
                        at: now,
                    };
                    d.effects.push(Effect::observe(pipeline, message, Observation::Failed(failed)));
                }
            }
        }
    }
    d.commit.step = Some(step);
    d
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::definition::parse_definition;
    use crate::exchange::ExchangeStatus;
    use crate::ids::{ExchangeId, IntegrationCode, IntegrationVersion};
    use crate::plan::plan;
    use serde_json::json;

    pub(crate) struct Fixture {
        definition: crate::definition::IntegrationDefinition,
        plan: Vec<PlannedSubStep>,
    }

    impl Fixture {
        pub(crate) fn new(document: serde_json::Value) -> Self {
            let definition = parse_definition(&document).expect("valid definition");
            let plan = plan(&definition);
            Self { definition, plan }
        }
        pub(crate) fn pipeline(&self) -> Pipeline<'_> {
            Pipeline { definition: &self.definition, plan: &self.plan }
        }
        /// An exchange of this pipeline in `status` at generation `recoveries`, its steps as
        /// `steps` says (status, attempts) from the first on, `Initial` with no attempts after.
        pub(crate) fn detail(
            &self,
            status: ExchangeStatus,
            recoveries: u32,
            steps: &[(StepStatus, u32)],
        ) -> crate::exchange::ExchangeDetail {
            let now = Utc::now();
            let created =
                super::super::start::new_exchange(self.pipeline(), ExchangeId::new("x"), json!({}), None, None, now);
            let exchange = crate::exchange::Exchange { status, recoveries, ..created.exchange };
            let steps = created
                .steps
                .into_iter()
                .map(|step| {
                    let (status, attempts) =
                        steps.get(step.sequence as usize).copied().unwrap_or((StepStatus::Initial, 0));
                    let completed_at = (status == StepStatus::Done).then_some(now);
                    crate::exchange::ExchangeStep { status, attempts, completed_at, ..step }
                })
                .collect();
            crate::exchange::ExchangeDetail { exchange, steps, logs: vec![] }
        }

        pub(crate) fn message(&self, sequence: u32) -> HandoffMessage {
            HandoffMessage {
                exchange_id: ExchangeId::new("x"),
                integration_code: IntegrationCode::parse("C").expect("code"),
                integration_version: IntegrationVersion::number(1).expect("version"),
                step_id: StepId::from_sequence(sequence),
                sub_step: self.plan[sequence as usize].sub_step,
                attempt: 1,
                input: Some(Payload::raw("[1]")),
                parameters: json!({}),
                not_before: None,
                recovery: 2,
                parent: None,
                requested_by: None,
                reexecution: false,
            }
        }
        fn record(&self, sequence: u32, decision: StepDecision, outcome: Result<StepOutput, Failure>) -> Decision {
            let m = self.message(sequence);
            let step = step_change(&m, false, 3, Vec::new(), Utc::now());
            record(self.pipeline(), &self.plan[sequence as usize], &m, step, decision, outcome, Utc::now())
        }
    }

    fn fixture() -> Fixture {
        Fixture::new(json!({"code": "C", "version": 1, "steps": [
            {"name": "t", "type": "transformation", "condition": "false", "function": {"jq": "."}},
            {"name": "d", "type": "delivery", "destinations": [
                {"kind": "rest", "main": true, "request": {"url": "http://main.example"}},
                {"kind": "rest", "request": {"url": "http://second.example"}}]},
            {"name": "p", "type": "invokeProcess", "kind": "process", "request": {"url": "http://p.example"}, "expectNotification": true}
        ]}))
    }

    /// main rest (1), secondary agent (2, 3, 4), secondary rest (5), signoff (6).
    fn fixture_with_secondary_agent() -> Fixture {
        Fixture::new(json!({"code": "C", "version": 1, "steps": [
            {"name": "d", "type": "delivery", "destinations": [
                {"kind": "rest", "main": true, "request": {"url": "http://main.example"}},
                {"kind": "agent", "healthUrl": "http://agent.example/health", "request": {"url": "http://agent.example"}},
                {"kind": "rest", "request": {"url": "http://third.example"}}]}
        ]}))
    }

    /// The one handoff among `effects` (what an attempt tells its endpoint aside).
    fn only_send(effects: &[Effect]) -> &HandoffMessage {
        let sends: Vec<&Effect> = effects.iter().filter(|e| !matches!(e, Effect::Observe { .. })).collect();
        match sends[..] {
            [Effect::Send { message, .. }] => message,
            _ => panic!("expected one handoff, got {effects:?}"),
        }
    }

    #[test]
    fn a_false_condition_skips_the_rest_of_its_step_in_the_same_commit() {
        let f = fixture();
        let output = StepOutput { skip_to: Some(3), ..StepOutput::default() };
        let d = f.record(1, StepDecision::MarkDone, Ok(output));
        assert_eq!(d.commit.skip, vec![StepId::from_sequence(2)]);
        assert_eq!(d.commit.recovery, 2, "commits are bound to the recovery generation");
        let next = only_send(&d.effects);
        assert_eq!(next.sub_step, SubStep::DeliverRest);
        assert_eq!(next.input, Some(Payload::raw("[1]")), "the input flows past the skipped step");
    }

    #[test]
    fn a_failed_secondary_agent_skips_its_remaining_sub_steps_and_the_next_destination_runs() {
        let f = fixture_with_secondary_agent();
        let failure = Failure::transient("agent down");
        let d = f.record(2, StepDecision::MarkFailed(failure.clone()), Err(failure));
        assert_eq!(d.commit.skip, vec![StepId::from_sequence(3), StepId::from_sequence(4)]);
        assert_eq!(d.commit.exchange, ExchangeChange::RequireNotFinal);
        let next = only_send(&d.effects);
        assert!(next.sub_step == SubStep::DeliverRest && next.step_id == StepId::from_sequence(5));
        // A rejected report of a secondary agent ends the wait: the exchange runs on.
        let failure =
            Failure::business(crate::error_code::ErrorCode::CallbackFailure, "the agent reported failure: no");
        let d = f.record(4, StepDecision::MarkFailed(failure.clone()), Err(failure));
        assert!(d.commit.skip.is_empty());
        assert!(
            matches!(d.commit.exchange, ExchangeChange::SetStatus { to: ExchangeStatus::Started, ref from, .. } if from == &[ExchangeStatus::WaitingOnExternalSystem])
        );
        assert_eq!(only_send(&d.effects).step_id, StepId::from_sequence(5));
    }

    #[test]
    fn a_reexecuted_secondary_runs_on_the_completed_exchange_and_nothing_follows_it() {
        let f = fixture_with_secondary_agent();
        let m = HandoffMessage { reexecution: true, ..f.message(5) };
        let completed = ExchangeChange::RequireIn(vec![ExchangeStatus::Completed]);
        for (decision, outcome) in [
            (StepDecision::MarkDone, Ok(StepOutput::default())),
            (
                StepDecision::MarkFailed(Failure::business(crate::error_code::ErrorCode::CallbackFailure, "nope")),
                Err(Failure::business(crate::error_code::ErrorCode::CallbackFailure, "nope")),
            ),
        ] {
            let step = step_change(&m, true, 3, Vec::new(), Utc::now());
            let d = record(f.pipeline(), &f.plan[5], &m, step, decision, outcome, Utc::now());
            assert_eq!(d.commit.exchange, completed, "it requires the exchange Completed and moves it not");
            assert!(d.commit.skip.is_empty());
            assert!(d.effects.iter().all(|e| matches!(e, Effect::Observe { .. })), "no handoff: {:?}", d.effects);
        }
        // Its retries stay re-executions.
        let retry = StepDecision::ScheduleRetry { next_attempt: 2, delay_seconds: 1 };
        let step = step_change(&m, true, 3, Vec::new(), Utc::now());
        let d = record(f.pipeline(), &f.plan[5], &m, step, retry, Err(Failure::transient("503")), Utc::now());
        assert!(only_send(&d.effects).reexecution);
    }

    #[test]
    fn a_failed_secondary_destination_is_recorded_and_the_exchange_goes_on() {
        let f = fixture();
        let d = f.record(
            4,
            StepDecision::MarkFailed(Failure::business(crate::error_code::ErrorCode::CallbackFailure, "nope")),
            Err(Failure::business(crate::error_code::ErrorCode::CallbackFailure, "nope")),
        );
        assert_eq!(d.commit.exchange, ExchangeChange::RequireNotFinal);
        assert_eq!(d.commit.errors.len(), 1);
        assert!(!d.commit.errors[0].exchange_failed);
        only_send(&d.effects);
        let d = f.record(
            3,
            StepDecision::MarkFailed(Failure::business(crate::error_code::ErrorCode::CallbackFailure, "nope")),
            Err(Failure::business(crate::error_code::ErrorCode::CallbackFailure, "nope")),
        );
        assert!(matches!(d.commit.exchange, ExchangeChange::SetStatus { to: ExchangeStatus::Failed, .. }));
        assert!(d.effects.is_empty(), "a failed main destination stops the exchange");
    }

    #[test]
    fn long_retry_delays_become_stored_timers_and_short_ones_delayed_messages() {
        let f = fixture();
        let retry = StepDecision::ScheduleRetry { next_attempt: 2, delay_seconds: 5 };
        let d = f.record(3, retry, Err(Failure::transient("503")));
        assert!(d.commit.timers.is_empty());
        assert!(matches!(
            &d.effects[..],
            [Effect::Observe { observation: Observation::Retrying(r), .. }, Effect::Send { delay: 5, message, .. }]
                if message.attempt == 2 && r.next_attempt_at > r.at && r.error == "503"
        ));
        assert_eq!(d.commit.step.as_ref().and_then(|s| s.last_error.as_ref()).map(|e| e.message.as_str()), Some("503"));
        let retry = StepDecision::ScheduleRetry { next_attempt: 2, delay_seconds: 3600 };
        let d = f.record(3, retry, Err(Failure::transient("503")));
        assert!(matches!(&d.effects[..], [Effect::Observe { .. }]), "the endpoint is told; the retry is stored");
        assert!(matches!(&d.commit.timers[..], [Timer { kind: TimerKind::Handoff { .. }, .. }]));
    }

    #[test]
    fn an_armed_wait_moves_the_exchange_to_waiting_and_hands_off_nothing() {
        let f = fixture();
        let wait =
            Wait { step_id: StepId::from_sequence(6), timeout_at: Some(Utc::now() + ChronoDuration::seconds(30)) };
        let d = f.record(5, StepDecision::MarkDone, Ok(StepOutput { wait: Some(wait), ..StepOutput::default() }));
        assert!(matches!(
            d.commit.exchange,
            ExchangeChange::SetStatus { to: ExchangeStatus::WaitingOnExternalSystem, .. }
        ));
        assert!(matches!(
            &d.effects[..],
            [
                Effect::Observe { observation: Observation::Succeeded, .. },
                Effect::SendTimer { timer: Timer { kind: TimerKind::StepTimeout { .. }, .. }, .. }
            ]
        ));
        let d = f.record(6, StepDecision::MarkDone, Ok(StepOutput::default()));
        assert_eq!(d.commit.require_done, Some(StepId::from_sequence(5)), "a callback cannot overtake its call");
        assert!(matches!(d.commit.exchange, ExchangeChange::SetStatus { to: ExchangeStatus::Started, .. }));
    }

    #[test]
    fn signoff_completes_records_the_result_and_counts_on_the_parent() {
        let f = fixture();
        let last = (f.plan.len() - 1) as u32;
        let mut m = f.message(last);
        m.parent = Some(crate::exchange::ParentLink {
            exchange_id: ExchangeId::new("parent"),
            step_id: StepId::from_sequence(3),
            index: 0,
            depth: 1,
        });
        let attempt = Attempt {
            claimed: false,
            outcome: Ok(StepOutput::default()),
            logs: vec![],
            pass_on: None,
            recorded: vec![],
            started_at: None,
        };
        let d = attempt_finished(f.pipeline(), &f.plan[last as usize], &m, attempt, 0.5, Utc::now());
        assert!(matches!(
            d.commit.exchange,
            ExchangeChange::SetStatus { to: ExchangeStatus::Completed, completed_at: Some(_), .. }
        ));
        assert_eq!(d.commit.result, m.input);
        assert!(d.commit.tally.as_ref().is_some_and(|t| t.completed && t.parent.as_str() == "parent"));
        assert!(matches!(&d.effects[..], [Effect::ResumeParentIfLast(_)]));
    }

    #[test]
    fn a_manual_retry_is_logged_with_its_attempt_and_not_carried_on() {
        let f = Fixture::new(json!({"code": "C", "version": 1, "steps": [
            {"name": "d", "type": "delivery", "retry": {"maxAttempts": 5, "intervalSeconds": 1},
             "destinations": [{"kind": "rest", "request": {"url": "http://main.example"}}]}]}));
        let asked = HandoffMessage { attempt: 2, requested_by: Some("ops".into()), ..f.message(1) };
        let run = |outcome: Result<StepOutput, Failure>| {
            let a = Attempt { claimed: true, outcome, logs: vec![], pass_on: None, recorded: vec![], started_at: None };
            attempt_finished(f.pipeline(), &f.plan[1], &asked, a, 0.0, Utc::now())
        };
        let failed = run(Err(Failure::transient("503")));
        let lines: Vec<&str> = failed.commit.step.iter().flat_map(|s| s.logs.iter()).map(|l| l.line.as_str()).collect();
        assert_eq!(lines, ["Attempt 2 ran now: a manual retry requested by ops"]);
        assert!(
            matches!(&failed.effects[..], [Effect::Observe { .. }, Effect::Send { message, .. }] if message.attempt == 3 && message.requested_by.is_none())
        );
        let done = run(Ok(StepOutput::default()));
        assert!(only_send(&done.effects).requested_by.is_none(), "the next step was not asked for");
        let plain = HandoffMessage { attempt: 2, ..f.message(1) };
        let a = Attempt {
            claimed: true,
            outcome: Err(Failure::transient("503")),
            logs: vec![],
            pass_on: None,
            recorded: vec![],
            started_at: None,
        };
        let d = attempt_finished(f.pipeline(), &f.plan[1], &plain, a, 0.0, Utc::now());
        assert!(d.commit.step.is_some_and(|s| s.logs.is_empty()), "an automatic attempt logs nothing of the kind");
    }

    #[test]
    fn retries_follow_the_policy_in_force_and_stop_at_its_maximum() {
        let f = Fixture::new(json!({"code": "C", "version": 1, "steps": [
            {"name": "d", "type": "delivery", "retry": {"maxAttempts": 3, "intervalSeconds": 1},
             "destinations": [{"kind": "rest", "request": {"url": "http://main.example"}}]}]}));
        let planned = &f.plan[1];
        let failed = |attempt: u32| {
            let m = HandoffMessage { attempt, ..f.message(1) };
            let a = Attempt {
                claimed: true,
                outcome: Err(Failure::transient("503")),
                logs: vec![],
                pass_on: None,
                recorded: vec![],
                started_at: None,
            };
            attempt_finished(f.pipeline(), planned, &m, a, 0.0, Utc::now())
        };
        assert!(matches!(
            &failed(1).effects[..],
            [Effect::Observe { observation: Observation::Retrying(r), .. }, Effect::Send { message, .. }]
                if message.attempt == 2 && (r.attempt, r.max_attempts) == (1, 3)
        ));
        let last = failed(3);
        assert!(
            matches!(&last.effects[..], [Effect::Observe { observation: Observation::Failed(f), .. }] if f.error.starts_with("503")),
            "a system failure is told to the endpoint: {:?}",
            last.effects
        );
        assert_eq!(last.commit.step.as_ref().map(|s| s.status), Some(StepStatus::Failed));
        assert!(matches!(last.commit.exchange, ExchangeChange::SetStatus { to: ExchangeStatus::Failed, .. }));
        // Lowered below the attempt a queued retry carries: it fails without running.
        let m = HandoffMessage { attempt: 4, ..f.message(1) };
        let d = beyond_policy(f.pipeline(), planned, &m, Utc::now()).expect("beyond the policy");
        assert_eq!(d.commit.step.as_ref().map(|s| s.status), Some(StepStatus::Failed));
        assert!(beyond_policy(f.pipeline(), planned, &f.message(1), Utc::now()).is_none());
    }
}
